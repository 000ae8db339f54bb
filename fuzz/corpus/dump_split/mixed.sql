CREATE TABLE `t` (id int, s varchar(9)) /*!40101 DEFAULT CHARSET=latin1 */;
INSERT INTO t VALUES (1,'it''s'),(2,'a\';b'),(3,"q");
-- comment ;
# hash ;
/* block ; */
DELIMITER ;;
CREATE TRIGGER x BEFORE INSERT ON t FOR EACH ROW BEGIN SET NEW.id = 1; END;;
DELIMITER ;
USE world
SELECT 1