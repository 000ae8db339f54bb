-- The equivalence corpus: every kind of object a dump holds, in two databases. Table
-- names sort in foreign-key order, so that a --compact dump (without
-- FOREIGN_KEY_CHECKS=0) loads with the client too.
CREATE DATABASE c1 CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
CREATE DATABASE `c 2` CHARACTER SET latin1;
USE c1;
CREATE TABLE owner (id INT PRIMARY KEY AUTO_INCREMENT, name VARCHAR(40) NOT NULL, bin VARBINARY(64), note TEXT, born DATE, KEY (name)) ENGINE=InnoDB;
CREATE TABLE pet (id INT PRIMARY KEY, owner_id INT, amount DECIMAL(10,2), FOREIGN KEY (owner_id) REFERENCES owner(id)) ENGINE=InnoDB;
CREATE TABLE audit (id INT AUTO_INCREMENT PRIMARY KEY, what VARCHAR(100)) ENGINE=InnoDB;
CREATE TABLE `we``ird; name` (`col -- x` INT, `a
b` VARCHAR(10), `it's` BLOB) ENGINE=InnoDB;
INSERT INTO owner (name, bin, note, born) VALUES
  ('Zoë', UNHEX('00FF27225C0A0D1A3B'), 'line1\nline2; -- not a comment /* nor this */', '2020-01-02'),
  ('it''s', NULL, '#hash\r\n', NULL),
  ('日本語', UNHEX(''), REPEAT('xy;', 3000), '1999-12-31');
INSERT INTO pet VALUES (1, 1, 10.5), (2, 1, -3.25), (3, 2, NULL);
INSERT INTO `we``ird; name` VALUES (1, 'semi;colon', UNHEX('00010203FEFF')), (2, 'DELIMITER', NULL), (3, '/*!5 x*/', '-- y');
-- MariaDB's other kinds of table: system-versioned (the dump holds the current rows, its
-- history stays behind) and a sequence (mariadb-dump writes CREATE SEQUENCE and SETVAL).
CREATE TABLE versioned (id INT PRIMARY KEY, v VARCHAR(10)) WITH SYSTEM VERSIONING;
INSERT INTO versioned VALUES (1, 'one'), (2, 'two');
UPDATE versioned SET v = 'uno' WHERE id = 1;
CREATE SEQUENCE seq START WITH 100 INCREMENT BY 5;
DO NEXTVAL(seq);
CREATE VIEW v_owner AS SELECT p.id, p.name, COUNT(c.id) AS pets FROM owner p LEFT JOIN pet c ON c.owner_id = p.id GROUP BY p.id, p.name;
CREATE VIEW v_nested AS SELECT name FROM v_owner WHERE pets > 0;
DELIMITER $$
CREATE TRIGGER owner_ai AFTER INSERT ON owner FOR EACH ROW BEGIN INSERT INTO audit (what) VALUES (CONCAT('insert; ', NEW.name)); END$$
CREATE TRIGGER pet_bu BEFORE UPDATE ON pet FOR EACH ROW SET NEW.amount = IFNULL(NEW.amount, 0)$$
CREATE PROCEDURE add_owner(IN n VARCHAR(40)) BEGIN INSERT INTO owner (name) VALUES (n); SELECT LAST_INSERT_ID(); END$$
CREATE FUNCTION twice(x INT) RETURNS INT DETERMINISTIC BEGIN RETURN x * 2; END$$
CREATE EVENT nightly ON SCHEDULE EVERY 1 DAY STARTS '2030-01-01 00:00:00' DISABLE DO BEGIN DELETE FROM audit WHERE id < 0; END$$
DELIMITER ;
USE `c 2`;
CREATE TABLE t (id INT PRIMARY KEY, txt VARCHAR(20), blb BLOB) ENGINE=InnoDB;
INSERT INTO t VALUES (1, CONVERT(UNHEX('42E96AEF61') USING latin1), UNHEX('DEADBEEF00')), (2, CONVERT(UNHEX('E9E8') USING latin1), NULL);
CREATE VIEW cross_db AS SELECT t.id, p.name FROM t JOIN c1.owner p ON p.id = t.id;
SET sql_mode = 'ANSI_QUOTES';
CREATE PROCEDURE "quoted" () SELECT "id" FROM t;
SET sql_mode = DEFAULT;
-- A definer that does not exist where the dump is loaded: dbhelper rewrites it.
CREATE USER gone@'%';
CREATE DEFINER = gone@'%' SQL SECURITY INVOKER VIEW orphan AS SELECT id FROM t;
CREATE DEFINER = gone@'%' PROCEDURE orphan_p() SELECT 1;
DROP USER gone@'%';
