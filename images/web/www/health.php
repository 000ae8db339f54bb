<?php
// PASS (200) when the database answers a real query as the application user, FAIL (503)
// otherwise, so that a load balancer or `curl -f` can tell. The reason goes to the log only.

declare(strict_types=1);
require __DIR__ . '/../lib/db.php';

header('Content-Type: text/plain; charset=utf-8');
header('Cache-Control: no-store');
try {
    $db = db_connect();
    db_rows($db, 'SELECT ID FROM City LIMIT 1');
    $db->close();
    echo "PASS\n";
} catch (Throwable $e) {
    error_log('health.php: FAIL: ' . $e->getMessage());
    http_response_code(503);
    echo "FAIL\n";
}
