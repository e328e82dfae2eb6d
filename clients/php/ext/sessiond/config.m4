dnl The sessiond session handler's optional C extension (see README.md).
PHP_ARG_ENABLE([sessiond],
  [whether to enable the sessiond extension],
  [AS_HELP_STRING([--enable-sessiond], [Enable the sessiond session handler's C helpers])],
  [yes])

if test "$PHP_SESSIOND" != "no"; then
  PHP_NEW_EXTENSION(sessiond, sessiond.c handler.c, $ext_shared,, -DZEND_ENABLE_STATIC_TSRMLS_CACHE=1)
fi
