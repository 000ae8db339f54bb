<?php
// The City table of the world database, read as the application user from the database
// that etcd points at.

declare(strict_types=1);
require __DIR__ . '/../lib/db.php';
require __DIR__ . '/../lib/html.php';

try {
    $db = db_connect();
    $cities = db_rows($db, 'SELECT ID, Name, CountryCode, District, Population FROM City ORDER BY ID');
    $db->close();
} catch (Throwable $e) {
    error_log('world.php: ' . $e->getMessage());
    http_response_code(503);
    page_start('World: database unavailable');
    echo "<p>The world database does not answer right now.</p>\n";
    page_end();
    exit;
}

page_start('World: ' . count($cities) . ' cities');
echo "<table id=\"cities\">\n<tr><th>ID</th><th>Name</th><th>CountryCode</th><th>District</th><th>Population</th></tr>\n";
foreach ($cities as $c) {
    echo '<tr><td>' . h($c['ID']) . '</td><td>' . h($c['Name']) . '</td><td>' . h($c['CountryCode'])
        . '</td><td>' . h($c['District']) . '</td><td>' . h($c['Population']) . "</td></tr>\n";
}
echo "</table>\n";
page_end();
