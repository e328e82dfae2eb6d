<?php
// Whether this PHP process (php -S, php-fpm, CLI) loaded the sessiond C
// extension: run-tests.sh loads it in all of them for the first pass.
echo json_encode(['ext' => extension_loaded('sessiond'), 'native' => function_exists('sessiond_resp_parse')]);
