<?php
// The frame every HTML page shares: UTF-8, a title, a link back to the index.

declare(strict_types=1);

/** Escapes text for HTML. */
function h(string|int|float|null $text): string
{
    return htmlspecialchars((string) $text, ENT_QUOTES | ENT_SUBSTITUTE, 'UTF-8');
}

/** Sends the headers and the top of a page. */
function page_start(string $title): void
{
    header('Content-Type: text/html; charset=utf-8');
    header('Cache-Control: no-store');
    echo "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n";
    echo '<title>' . h($title) . "</title>\n</head>\n<body>\n";
    echo '<h1>' . h($title) . "</h1>\n";
}

/** Closes a page. */
function page_end(): void
{
    echo "<p><a href=\"/\">index</a></p>\n</body>\n</html>\n";
}
