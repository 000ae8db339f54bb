<?php
// The default page: what this web app is, and links to its pages.

declare(strict_types=1);
require __DIR__ . '/../lib/html.php';

page_start('Welcome to the world web app');
?>
<p>Served by <?= h(gethostname() ?: 'unknown') ?>.</p>
<ul>
<li><a href="/home.php">home.php</a>: this container's host name and the time</li>
<li><a href="/world.php">world.php</a>: the City table of the world database</li>
<li><a href="/health.php">health.php</a>: PASS when the database answers, FAIL otherwise</li>
</ul>
<?php
page_end();
