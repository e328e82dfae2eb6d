<?php
// Readiness probe of the test web servers: which server answered (the token
// Env gave it) and its pid.
echo getenv('SESSIOND_TEST_SERVER_TOKEN'), ' ', getmypid();
