<?php
// CLI: the extension's PHP functions around one session of the native
// handler (set up by the command line's -d settings): sessiond_native_info()
// before, during and after it, sessiond_set_mode() with a bad mode, with a
// mode and null before session_start(), and while the session is active.
ob_start();
$errors = [];
set_error_handler(static function (int $no, string $str) use (&$errors): bool {
    $errors[] = [$no, $str];
    return true;
});
ini_set('session.use_cookies', '0');
$try = static function (callable $f): ?string {
    try {
        $f();
        return null;
    } catch (\Throwable $t) {
        return get_class($t) . ': ' . $t->getMessage();
    }
};
$out = ['info_before' => sessiond_native_info()];
$out['bad_mode'] = $try(static fn () => sessiond_set_mode('bogus'));
sessiond_set_mode('readonly');
$out['mode_set'] = sessiond_native_info()['mode'];
sessiond_set_mode(null);
$out['mode_reset'] = sessiond_native_info()['mode'];
$out['started'] = session_start();
$out['id'] = session_id();
$out['info_active'] = sessiond_native_info();
$out['set_mode_active'] = $try(static fn () => sessiond_set_mode('none'));
$_SESSION['v'] = 1;
$out['wrote'] = session_write_close();
$out['info_after'] = sessiond_native_info();
$out['errors'] = $errors;
fwrite(STDOUT, json_encode($out));
