<?php
// The container's host name and the time: which web container answered, and when.

declare(strict_types=1);
require __DIR__ . '/../lib/html.php';

page_start('Home');
?>
<p>Host name: <strong id="hostname"><?= h(gethostname() ?: 'unknown') ?></strong></p>
<p>Time: <strong id="time"><?= h(gmdate('Y-m-d H:i:s') . ' UTC') ?></strong></p>
<?php
page_end();
