/*
 * sessiond: optional C helpers for the sessiond PHP session handler
 * (clients/php/src). The handler works without this extension; with it
 * loaded, the hot per-request CPU work runs here instead of in userland:
 *
 *   sessiond_resp_parse()    one RESP reply from a buffer (Connection::readReply)
 *   sessiond_resp_encode()   RESP requests (Connection::exchange)
 *   sessiond_split_session() PHP's session string -> per-key encodings
 *                            (Codec::splitSession)
 *   sessiond_absorb_fields() a session read reply -> $_SESSION data and the
 *                            read set (SessionHandler::absorbRead)
 *
 * Every function mirrors the PHP code it replaces exactly. Where an input
 * is anything but the plain case (an incomplete or malformed reply, a
 * session string with back-references, fields of unexpected types), the
 * function declines (returns a documented "not here" value) before any side
 * effect and the PHP code handles it: it then waits for more bytes, throws
 * its own protocol error, or takes its slow path, exactly as without the
 * extension. That keeps the error behaviour in one place (the PHP code) and
 * the C code small.
 *
 * All reads are bounds-checked against the zend_string length: malformed
 * input must never crash PHP (tests/ExtensionTest.php fuzzes it).
 */

#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include "php.h"
#include "ext/standard/info.h"
#include "ext/standard/php_var.h"
#include "zend_smart_str.h"
#include "zend_exceptions.h"

#include "sessiond_shared.h"

/* Nesting deeper than this is left to the PHP parser (which recurses
 * without a limit); sessiond's replies nest two levels. */
#define RESP_MAX_DEPTH 64
/* Codec::scan() gives up deeper than this. */
#define SCAN_MAX_DEPTH 512

/* ------------------------------------------------------------------------
 * RESP replies
 * --------------------------------------------------------------------- */

/* INCOMPLETE: the reply is not all in the buffer yet (the caller reads
 * more and asks again); DECLINED: something the PHP parser must judge (a
 * protocol error, an integer of more than 18 digits, deep nesting). */

/* Connection::intOf(): /^-?[0-9]+$/ (anything else is its protocol error).
 * Values of more than 18 digits are declined (PHP's saturating (int) cast
 * decides those; sessiond never sends them). */
static bool resp_int(const char *s, size_t n, zend_long *out)
{
	size_t i = 0;
	bool neg = false;
	if (n > 0 && s[0] == '-') {
		neg = true;
		i = 1;
	}
	if (i >= n) {
		return false;
	}
	while (i < n - 1 && s[i] == '0') {
		i++; /* leading zeros: (int) "007" is 7 */
	}
	if (n - i > 18) {
		return false;
	}
	zend_long v = 0;
	for (; i < n; i++) {
		if (s[i] < '0' || s[i] > '9') {
			return false;
		}
		v = v * 10 + (s[i] - '0');
	}
	*out = neg ? -v : v;
	return true;
}

static zend_class_entry *server_exception_ce(void)
{
	zend_string *name = zend_string_init("Sessiond\\Exception\\ServerException", sizeof("Sessiond\\Exception\\ServerException") - 1, 0);
	zend_class_entry *ce = zend_lookup_class(name);
	zend_string_release(name);
	return ce;
}

/* new ServerException($line), as the PHP parser does for `-` and `!`. */
static parse_rc server_exception(zval *rv, const char *s, size_t n)
{
	zend_class_entry *ce = server_exception_ce();
	if (EG(exception)) {
		return THREW; /* the autoloader threw */
	}
	if (ce == NULL || ce->constructor == NULL) {
		return DECLINED;
	}
	zval arg;
	object_init_ex(rv, ce);
	ZVAL_STRINGL(&arg, s, n);
	zend_call_known_instance_method_with_1_params(ce->constructor, Z_OBJ_P(rv), NULL, &arg);
	zval_ptr_dtor(&arg);
	if (EG(exception)) {
		zval_ptr_dtor(rv);
		ZVAL_UNDEF(rv);
		return THREW;
	}
	return PARSED;
}

/* One reply of buf[*pos..len). On PARSED, *pos is past it and rv holds it;
 * otherwise rv is undefined and *pos unchanged. */
parse_rc sd_resp_parse(const char *buf, size_t len, size_t *pos, zval *rv, int depth)
{
	size_t p = *pos;
	const char *line = buf + p;
	const char *end = NULL;
	/* strpos($buf, "\r\n", $pos): a lone "\r" belongs to the line */
	for (const char *q = line; q + 1 < buf + len; q++) {
		q = memchr(q, '\r', (buf + len) - q - 1);
		if (q == NULL) {
			break;
		}
		if (q[1] == '\n') {
			end = q;
			break;
		}
	}
	if (end == NULL) {
		return INCOMPLETE;
	}
	if (end == line || depth > RESP_MAX_DEPTH) {
		return DECLINED; /* an empty line is a protocol error */
	}
	char type = line[0];
	const char *rest = line + 1;
	size_t rl = (size_t)(end - rest);
	p = (size_t)(end - buf) + 2;
	zend_long n;
	parse_rc rc;

	switch (type) {
	case '+':
	case '(':
		ZVAL_STRINGL_FAST(rv, rest, rl);
		break;
	case '-':
		if ((rc = server_exception(rv, rest, rl)) != PARSED) {
			return rc;
		}
		break;
	case '!':
		if (!resp_int(rest, rl, &n) || n < 0) {
			return DECLINED;
		}
		if ((size_t)n > len - p || len - p - (size_t)n < 2) {
			return INCOMPLETE;
		}
		if (buf[p + n] != '\r' || buf[p + n + 1] != '\n') {
			return DECLINED;
		}
		if ((rc = server_exception(rv, buf + p, (size_t)n)) != PARSED) {
			return rc;
		}
		p += (size_t)n + 2;
		break;
	case ':':
		if (!resp_int(rest, rl, &n)) {
			return DECLINED;
		}
		ZVAL_LONG(rv, n);
		break;
	case '$':
	case '=':
		if (!resp_int(rest, rl, &n)) {
			return DECLINED;
		}
		if (n < 0) {
			ZVAL_NULL(rv);
			break;
		}
		if ((size_t)n > len - p || len - p - (size_t)n < 2) {
			return INCOMPLETE;
		}
		if (buf[p + n] != '\r' || buf[p + n + 1] != '\n') {
			return DECLINED; /* not CRLF-terminated: the PHP parser's protocol error */
		}
		if (type == '=') {
			/* substr($s, 4): the verbatim string's "txt:" prefix */
			if (n > 4) {
				ZVAL_STRINGL_FAST(rv, buf + p + 4, (size_t)n - 4);
			} else {
				ZVAL_EMPTY_STRING(rv);
			}
		} else {
			ZVAL_STRINGL_FAST(rv, buf + p, (size_t)n);
		}
		p += (size_t)n + 2;
		break;
	case '*':
	case '~':
	case '>': {
		if (!resp_int(rest, rl, &n)) {
			return DECLINED;
		}
		if (n < 0) {
			ZVAL_NULL(rv);
			break;
		}
		/* every element takes 3 bytes at least: more than fit is incomplete
		 * (and a huge count never allocates) */
		if ((size_t)n > (len - p) / 3) {
			return INCOMPLETE;
		}
		array_init_size(rv, (uint32_t)n);
		zend_hash_real_init_packed(Z_ARRVAL_P(rv));
		for (zend_long i = 0; i < n; i++) {
			zval el;
			if ((rc = sd_resp_parse(buf, len, &p, &el, depth + 1)) != PARSED) {
				zval_ptr_dtor(rv);
				return rc;
			}
			zend_hash_next_index_insert_new(Z_ARRVAL_P(rv), &el);
		}
		break;
	}
	case '%':
	case '|': {
		if (!resp_int(rest, rl, &n)) {
			return DECLINED;
		}
		if (n > 0 && (size_t)n > (len - p) / 6) {
			return INCOMPLETE;
		}
		array_init(rv);
		/* a negative count reads no pair, as the PHP loop does */
		for (zend_long i = 0; i < n; i++) {
			zval k, v;
			if ((rc = sd_resp_parse(buf, len, &p, &k, depth + 1)) != PARSED) {
				zval_ptr_dtor(rv);
				return rc;
			}
			zend_string *key;
			switch (Z_TYPE(k)) {
			case IS_LONG:
			case IS_DOUBLE:
			case IS_STRING:
			case IS_TRUE:
			case IS_FALSE:
				key = zval_get_string(&k); /* is_scalar($k) ? (string) $k */
				break;
			default:
				key = zend_long_to_str(i);
			}
			zval_ptr_dtor(&k);
			if ((rc = sd_resp_parse(buf, len, &p, &v, depth + 1)) != PARSED) {
				zend_string_release(key);
				zval_ptr_dtor(rv);
				return rc;
			}
			zend_symtable_update(Z_ARRVAL_P(rv), key, &v);
			zend_string_release(key);
		}
		if (type == '|') {
			/* an attribute: skipped, the value that follows is the reply */
			zval_ptr_dtor(rv);
			if ((rc = sd_resp_parse(buf, len, &p, rv, depth + 1)) != PARSED) {
				return rc;
			}
		}
		break;
	}
	case '_':
		ZVAL_NULL(rv);
		break;
	case '#':
		ZVAL_BOOL(rv, rl == 1 && rest[0] == 't');
		break;
	case ',': {
		zend_string *s = zend_string_init(rest, rl, 0);
		zval tmp;
		ZVAL_STR(&tmp, s);
		ZVAL_DOUBLE(rv, zval_get_double(&tmp)); /* (float) $rest */
		zend_string_release(s);
		break;
	}
	default:
		return DECLINED; /* unknown type: the PHP parser's protocol error */
	}
	*pos = p;
	return PARSED;
}

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_sessiond_resp_parse, 0, 2, IS_MIXED, 0)
	ZEND_ARG_TYPE_INFO(0, buf, IS_STRING, 0)
	ZEND_ARG_TYPE_INFO(1, offset, IS_LONG, 0)
ZEND_END_ARG_INFO()

/* sessiond_resp_parse(string $buf, int &$offset): mixed
 *
 * Parses the reply starting at $offset and moves $offset past it. Error
 * replies are returned as Sessiond\Exception\ServerException objects.
 * With $offset unchanged: false when the reply is not all in the buffer yet
 * (read more and call again), null when the PHP parser must judge it (a
 * protocol error, or something this parser leaves to it). */
PHP_FUNCTION(sessiond_resp_parse)
{
	zend_string *buf;
	zval *offset;

	ZEND_PARSE_PARAMETERS_START(2, 2)
		Z_PARAM_STR(buf)
		Z_PARAM_ZVAL(offset)
	ZEND_PARSE_PARAMETERS_END();

	zend_long off = zval_get_long(Z_REFVAL_P(offset));
	if (off < 0 || (size_t)off > ZSTR_LEN(buf)) {
		RETURN_NULL();
	}
	if ((size_t)off == ZSTR_LEN(buf)) {
		RETURN_FALSE; /* nothing read yet */
	}
	size_t pos = (size_t)off;
	zval rv;
	parse_rc rc = sd_resp_parse(ZSTR_VAL(buf), ZSTR_LEN(buf), &pos, &rv, 0);
	if (rc == THREW) {
		RETURN_THROWS();
	}
	if (rc == DECLINED) {
		RETURN_NULL();
	}
	if (rc == INCOMPLETE) {
		RETURN_FALSE;
	}
	ZEND_TRY_ASSIGN_REF_LONG(offset, (zend_long)pos);
	if (EG(exception)) {
		zval_ptr_dtor(&rv);
		RETURN_THROWS();
	}
	RETURN_COPY_VALUE(&rv);
}

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_sessiond_resp_encode, 0, 1, IS_STRING, 1)
	ZEND_ARG_TYPE_INFO(0, commands, IS_ARRAY, 0)
ZEND_END_ARG_INFO()

/* sessiond_resp_encode(array $commands): ?string
 *
 * Each command (a list of string|int|float) as a RESP array of bulk
 * strings, every argument cast with (string), as Connection::exchange()
 * does. null when a command is not an array (the PHP code then decides). */
PHP_FUNCTION(sessiond_resp_encode)
{
	HashTable *cmds;
	zval *cmd, *arg;

	ZEND_PARSE_PARAMETERS_START(1, 1)
		Z_PARAM_ARRAY_HT(cmds)
	ZEND_PARSE_PARAMETERS_END();

	ZEND_HASH_FOREACH_VAL(cmds, cmd) {
		ZVAL_DEREF(cmd);
		if (Z_TYPE_P(cmd) != IS_ARRAY) {
			RETURN_NULL();
		}
	} ZEND_HASH_FOREACH_END();

	smart_str out = {0};
	ZEND_HASH_FOREACH_VAL(cmds, cmd) {
		ZVAL_DEREF(cmd);
		smart_str_appendc(&out, '*');
		smart_str_append_long(&out, (zend_long)zend_hash_num_elements(Z_ARRVAL_P(cmd)));
		smart_str_appendl(&out, "\r\n", 2);
		ZEND_HASH_FOREACH_VAL(Z_ARRVAL_P(cmd), arg) {
			ZVAL_DEREF(arg);
			if (Z_TYPE_P(arg) == IS_STRING) {
				smart_str_appendc(&out, '$');
				smart_str_append_long(&out, (zend_long)Z_STRLEN_P(arg));
				smart_str_appendl(&out, "\r\n", 2);
				smart_str_append(&out, Z_STR_P(arg));
			} else if (Z_TYPE_P(arg) == IS_LONG) {
				char tmp[MAX_LENGTH_OF_LONG + 1];
				char *s = zend_print_long_to_buf(tmp + sizeof(tmp) - 1, Z_LVAL_P(arg));
				size_t l = (size_t)(tmp + sizeof(tmp) - 1 - s);
				smart_str_appendc(&out, '$');
				smart_str_append_long(&out, (zend_long)l);
				smart_str_appendl(&out, "\r\n", 2);
				smart_str_appendl(&out, s, l);
			} else {
				zend_string *s = zval_try_get_string(arg);
				if (s == NULL) {
					smart_str_free(&out);
					RETURN_THROWS();
				}
				smart_str_appendc(&out, '$');
				smart_str_append_long(&out, (zend_long)ZSTR_LEN(s));
				smart_str_appendl(&out, "\r\n", 2);
				smart_str_append(&out, s);
				zend_string_release(s);
			}
			smart_str_appendl(&out, "\r\n", 2);
		} ZEND_HASH_FOREACH_END();
	} ZEND_HASH_FOREACH_END();
	if (out.s == NULL) {
		RETURN_EMPTY_STRING();
	}
	RETURN_STR(smart_str_extract(&out));
}

/* ------------------------------------------------------------------------
 * Session strings (Codec::splitSession)
 * --------------------------------------------------------------------- */

typedef struct {
	const char *s;
	size_t len;
	bool saw_ref;
} scan_ctx;

/* [0-9]+ at *p; the value saturates above len (every use compares it
 * with what is left of the string, so any such value fails alike). */
static bool scan_digits(const scan_ctx *c, size_t *p, size_t *val)
{
	size_t q = *p, v = 0;
	while (q < c->len && c->s[q] >= '0' && c->s[q] <= '9') {
		if (v <= c->len) {
			v = v * 10 + (size_t)(c->s[q] - '0');
		}
		q++;
	}
	if (q == *p) {
		return false;
	}
	*val = v > c->len ? c->len + 1 : v;
	*p = q;
	return true;
}

static inline bool scan_lit(const scan_ctx *c, size_t *p, const char *lit, size_t n)
{
	if (*p > c->len || c->len - *p < n || memcmp(c->s + *p, lit, n) != 0) {
		return false;
	}
	*p += n;
	return true;
}

/* `T:<digits>` + lit at *p (the preg_match()es of Codec::scan()) */
static bool scan_head(const scan_ctx *c, size_t *p, const char *lit, size_t n, size_t *val)
{
	size_t q = *p + 2; /* past the type letter and ':' (checked by the caller) */
	if (q > c->len || c->s[*p + 1] != ':' || !scan_digits(c, &q, val) || !scan_lit(c, &q, lit, n)) {
		return false;
	}
	*p = q;
	return true;
}

static bool scan(scan_ctx *c, size_t *pp, int depth);

static bool scan_pairs(scan_ctx *c, size_t *p, size_t count, int depth)
{
	for (size_t i = 0; i < count; i++) {
		if (!scan(c, p, depth + 1) || !scan(c, p, depth + 1)) {
			return false;
		}
	}
	if (*p >= c->len || c->s[*p] != '}') {
		return false;
	}
	(*p)++;
	return true;
}

/* Codec::scan(): one serialized value at *pp, *pp moved past it. */
static bool scan(scan_ctx *c, size_t *pp, int depth)
{
	size_t p = *pp, v, start;
	const char *s = c->s;
	size_t len = c->len;
	if (depth > SCAN_MAX_DEPTH || p >= len) {
		return false;
	}
	/* every case below reads s[p + 1] only after p + 1 < len */
	if (p + 1 >= len) {
		return false;
	}
	switch (s[p]) {
	case 'N':
		if (s[p + 1] != ';') {
			return false;
		}
		*pp = p + 2;
		return true;
	case 'b':
	case 'i':
	case 'd': {
		const char *e = memchr(s + p, ';', len - p);
		if (e == NULL || s[p + 1] != ':') {
			return false;
		}
		*pp = (size_t)(e - s) + 1;
		return true;
	}
	case 'r':
	case 'R':
		if (!scan_head(c, &p, ";", 1, &v)) {
			return false;
		}
		c->saw_ref = true;
		*pp = p;
		return true;
	case 's':
	case 'E':
		if (!scan_head(c, &p, ":\"", 2, &v)) {
			return false;
		}
		if (v > len - p || len - p - v < 2 || s[p + v] != '"' || s[p + v + 1] != ';') {
			return false;
		}
		*pp = p + v + 2;
		return true;
	case 'S': {
		/* legacy escaped string: S:len:"…"; where len counts decoded bytes */
		if (!scan_head(c, &p, ":\"", 2, &v)) {
			return false;
		}
		for (size_t i = 0; i < v; i++) {
			if (p >= len) {
				return false;
			}
			p += s[p] == '\\' ? 3 : 1;
		}
		if (p > len || len - p < 2 || s[p] != '"' || s[p + 1] != ';') {
			return false;
		}
		*pp = p + 2;
		return true;
	}
	case 'a':
		if (!scan_head(c, &p, ":{", 2, &v)) {
			return false;
		}
		*pp = p;
		return scan_pairs(c, pp, v, depth);
	case 'O':
	case 'C': {
		bool custom = s[p] == 'C';
		if (!scan_head(c, &p, ":\"", 2, &v) || v > len - p) {
			return false;
		}
		start = p + v; /* past the class name */
		size_t dl;
		if (!scan_lit(c, &start, "\":", 2) || !scan_digits(c, &start, &dl) || !scan_lit(c, &start, ":{", 2)) {
			return false;
		}
		if (!custom) {
			*pp = start;
			return scan_pairs(c, pp, dl, depth);
		}
		if (dl >= len - start + 1 || start + dl >= len || s[start + dl] != '}') {
			return false;
		}
		*pp = start + dl + 1;
		return true;
	}
	}
	return false;
}

/* (string) (int) "<-?digits>" of an `i:…;` slice, as Codec::splitSession()
 * normalises it */
static zend_string *normalize_int(const char *d, size_t n)
{
	size_t i = 0;
	bool neg = n > 0 && d[0] == '-';
	if (neg) {
		i = 1;
	}
	while (i < n - 1 && d[i] == '0') {
		i++;
	}
	if (n - i <= 18) {
		zend_long v = 0;
		for (; i < n; i++) {
			v = v * 10 + (d[i] - '0');
		}
		return zend_long_to_str(neg ? -v : v);
	}
	/* PHP's own cast decides (it saturates) */
	zval tmp;
	ZVAL_STR(&tmp, zend_string_init(d, n, 0));
	zend_long v = zval_get_long(&tmp);
	zval_ptr_dtor(&tmp);
	return zend_long_to_str(v);
}

static void add_slice(HashTable *out, const char *key, size_t kl, const char *v, size_t vl)
{
	zval zv;
	/* /^i:(-?[0-9]+);$/: a PHP int is stored as plain decimal */
	bool is_int = vl >= 4 && v[0] == 'i' && v[1] == ':' && v[vl - 1] == ';';
	if (is_int) {
		size_t i = 2;
		if (v[i] == '-') {
			i++;
		}
		if (i >= vl - 1) {
			is_int = false;
		}
		for (; is_int && i < vl - 1; i++) {
			if (v[i] < '0' || v[i] > '9') {
				is_int = false;
			}
		}
	}
	if (is_int) {
		ZVAL_STR(&zv, normalize_int(v + 2, vl - 3));
	} else {
		ZVAL_STRINGL_FAST(&zv, v, vl);
	}
	zend_string *k = zend_string_init(key, kl, 0);
	zend_symtable_update(out, k, &zv);
	zend_string_release(k);
}

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_MASK_EX(arginfo_sessiond_split_session, 0, 2, MAY_BE_ARRAY | MAY_BE_NULL | MAY_BE_FALSE)
	ZEND_ARG_TYPE_INFO(0, data, IS_STRING, 0)
	ZEND_ARG_TYPE_INFO(0, handler, IS_STRING, 0)
ZEND_END_ARG_INFO()

/* sessiond_split_session(string $data, string $handler): array|null|false
 *
 * Codec::splitSession() for a non-empty $data and a supported $handler
 * (the PHP wrapper checks both): the per-key encodings, null when $data
 * cannot be decoded, false when a value refers to another (r:N; / R:N;),
 * for which the PHP code takes its unserialize() path. */
int sd_split_session(zend_string *data, int mode, HashTable *out)
{
	scan_ctx c = {ZSTR_VAL(data), ZSTR_LEN(data), false};
	const char *s = c.s;
	size_t len = c.len, p = 0, v;

	if (len == 0) {
		return SPLIT_OK;
	}
	if (mode == 2) {
		if (len < 2 || s[0] != 'a' || !scan_head(&c, &p, ":{", 2, &v)) {
			return SPLIT_FAILED;
		}
		for (size_t i = 0; i < v; i++) {
			size_t k0 = p;
			if (!scan(&c, &p, 0)) {
				return SPLIT_FAILED;
			}
			const char *kraw = s + k0;
			size_t kl = p - k0, ks;
			if (kraw[0] == 'i') {
				ks = 2; /* substr($kraw, 2, -1) */
				kl = kl - 3;
			} else if (kraw[0] == 's') {
				/* substr($kraw, strpos($kraw, ':', 2) + 2, -2) */
				const char *colon = memchr(kraw + 2, ':', kl - 2);
				ks = (size_t)(colon - kraw) + 2;
				kl = kl - ks - 2;
			} else {
				return SPLIT_FAILED;
			}
			size_t v0 = p;
			if (!scan(&c, &p, 0)) {
				return SPLIT_FAILED;
			}
			if (!c.saw_ref) {
				add_slice(out, kraw + ks, kl, s + v0, p - v0);
			}
		}
		if (p != len - 1 || s[p] != '}') {
			return SPLIT_FAILED;
		}
	} else {
		while (p < len) {
			const char *key;
			size_t kl;
			if (mode == 0) {
				const char *bar = memchr(s + p, '|', len - p);
				if (bar == NULL) {
					return SPLIT_FAILED;
				}
				key = s + p;
				kl = (size_t)(bar - key);
				p = (size_t)(bar - s) + 1;
			} else {
				kl = (unsigned char)s[p];
				if (kl > 127 || p + 1 + kl > len) {
					return SPLIT_FAILED;
				}
				key = s + p + 1;
				p += 1 + kl;
			}
			size_t v0 = p;
			if (!scan(&c, &p, 0)) {
				return SPLIT_FAILED;
			}
			if (!c.saw_ref) {
				add_slice(out, key, kl, s + v0, p - v0);
			}
		}
	}
	return c.saw_ref ? SPLIT_REFS : SPLIT_OK;
}

int sd_serialize_mode(const char *handler)
{
	if (strcmp(handler, "php") == 0) {
		return 0;
	}
	if (strcmp(handler, "php_binary") == 0) {
		return 1;
	}
	if (strcmp(handler, "php_serialize") == 0) {
		return 2;
	}
	return -1;
}

PHP_FUNCTION(sessiond_split_session)
{
	zend_string *data, *handler;

	ZEND_PARSE_PARAMETERS_START(2, 2)
		Z_PARAM_STR(data)
		Z_PARAM_STR(handler)
	ZEND_PARSE_PARAMETERS_END();

	int mode = sd_serialize_mode(ZSTR_VAL(handler));
	if (mode < 0 || strlen(ZSTR_VAL(handler)) != ZSTR_LEN(handler)) {
		zend_argument_value_error(2, "must be php, php_serialize or php_binary");
		RETURN_THROWS();
	}
	array_init(return_value);
	int rc = sd_split_session(data, mode, Z_ARRVAL_P(return_value));
	if (rc == SPLIT_OK) {
		return;
	}
	zval_ptr_dtor(return_value);
	if (rc == SPLIT_REFS) {
		RETURN_FALSE;
	}
	RETURN_NULL();
}

/* ------------------------------------------------------------------------
 * Field values (Codec::decodeValue / encodeValue) and absorbRead()
 * --------------------------------------------------------------------- */

/* @unserialize($raw): PHP's unserialize() with notices silenced as `@`
 * silences them (fatal errors are not). */
static void silent_unserialize(zval *rv, zend_string *raw)
{
	zend_long saved = EG(error_reporting);
	/* it destroys rv on failure, as unserialize()'s return value starts null */
	ZVAL_NULL(rv);
	if (!E_HAS_ONLY_FATAL_ERRORS(saved)) {
		EG(error_reporting) &= E_FATAL_ERRORS;
	}
	php_unserialize_with_options(rv, ZSTR_VAL(raw), ZSTR_LEN(raw), NULL, "unserialize");
	if (E_HAS_ONLY_FATAL_ERRORS(EG(error_reporting)) && !E_HAS_ONLY_FATAL_ERRORS(saved)) {
		EG(error_reporting) = saved;
	}
}

/* Codec::decodeValue() of a non-null string. false on an exception. */
bool sd_decode_value(zval *rv, zend_string *raw)
{
	const char *s = ZSTR_VAL(raw);
	size_t n = ZSTR_LEN(raw);
	/* /^-?[0-9]+$/ ($ also matches before a final "\n": such a value is
	 * never its own int's decimal form, so it stays the raw string) */
	size_t i = (n > 0 && s[0] == '-') ? 1 : 0, d0 = i;
	size_t m = (n > 0 && s[n - 1] == '\n') ? n - 1 : n;
	while (i < m && s[i] >= '0' && s[i] <= '9') {
		i++;
	}
	if (i == m && i > d0) {
		if (m != n) {
			ZVAL_STR_COPY(rv, raw);
			return true;
		}
		bool neg = d0 == 1;
		size_t z = d0;
		while (z < n && s[z] == '0') {
			z++;
		}
		size_t nd = n - z;
		if (nd == 0) {
			ZVAL_LONG(rv, 0);
			return true;
		}
		if (nd <= 18) {
			zend_long v = 0;
			for (; z < n; z++) {
				v = v * 10 + (s[z] - '0');
			}
			/* the normalised form is the int's own: an int, also for "-0…" */
			ZVAL_LONG(rv, neg ? -v : v);
			return true;
		}
		/* 19 digits or more: whether it fits is PHP's (int) cast's call */
		smart_str norm = {0};
		if (neg) {
			smart_str_appendc(&norm, '-');
		}
		smart_str_appendl(&norm, s + n - nd, nd);
		zend_string *ns = smart_str_extract(&norm);
		zval tmp;
		ZVAL_STR(&tmp, ns);
		zend_long v = zval_get_long(&tmp);
		zend_string *back = zend_long_to_str(v);
		bool same = zend_string_equals(back, ns);
		zend_string_release(back);
		zval_ptr_dtor(&tmp);
		if (same) {
			ZVAL_LONG(rv, v);
		} else {
			ZVAL_STR_COPY(rv, raw);
		}
		return true;
	}
	if (zend_string_equals_literal(raw, "b:0;")) {
		ZVAL_FALSE(rv);
		return true;
	}
	if (n > 0 && (s[n - 1] == ';' || s[n - 1] == '}')) {
		zval v;
		silent_unserialize(&v, raw);
		if (EG(exception)) {
			zval_ptr_dtor(&v);
			return false;
		}
		if (Z_TYPE(v) != IS_FALSE) {
			ZVAL_COPY_VALUE(rv, &v);
			return true;
		}
	}
	ZVAL_STR_COPY(rv, raw);
	return true;
}

/* Codec::encodeValue(). NULL on an exception. */
zend_string *sd_encode_value(zval *v)
{
	if (Z_TYPE_P(v) == IS_LONG) {
		return zend_long_to_str(Z_LVAL_P(v));
	}
	smart_str buf = {0};
	php_serialize_data_t var_hash;
	PHP_VAR_SERIALIZE_INIT(var_hash);
	php_var_serialize(&buf, v, &var_hash);
	PHP_VAR_SERIALIZE_DESTROY(var_hash);
	if (EG(exception)) {
		smart_str_free(&buf);
		return NULL;
	}
	if (buf.s == NULL) {
		return ZSTR_EMPTY_ALLOC();
	}
	return smart_str_extract(&buf);
}

/* The split key $field is an element of ("<key>.<element>"), or NULL. */
zend_string *sd_nested_of(HashTable *split, zend_string *field)
{
	zval *k;
	ZEND_HASH_FOREACH_VAL(split, k) {
		zend_string *ks = Z_STR_P(k);
		if (ZSTR_LEN(field) > ZSTR_LEN(ks) && ZSTR_VAL(field)[ZSTR_LEN(ks)] == '.'
				&& memcmp(ZSTR_VAL(field), ZSTR_VAL(ks), ZSTR_LEN(ks)) == 0) {
			return ks;
		}
	} ZEND_HASH_FOREACH_END();
	return NULL;
}

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_sessiond_absorb_fields, 0, 3, IS_ARRAY, 1)
	ZEND_ARG_TYPE_INFO(0, fields, IS_ARRAY, 0)
	ZEND_ARG_TYPE_INFO(0, splitKeys, IS_ARRAY, 0)
	ZEND_ARG_TYPE_INFO(1, readSet, IS_ARRAY, 0)
ZEND_END_ARG_INFO()

/* sessiond_absorb_fields(array $fields, array $splitKeys, array &$readSet): ?array
 *
 * The loop of SessionHandler::absorbRead(): for each (key, version, value)
 * triple of a session read reply with a value and a version, the decoded
 * value goes into the returned data (an element of a split key under that
 * key) and [version, canonical encoding] into $readSet. null, before any
 * side effect, when the fields are not a list of (string, int,
 * ?string) triples, a split key is not a non-empty string, or a split key
 * is both a field and the prefix of one (the PHP loop decides those). */
int sd_absorb_fields(HashTable *fields, HashTable *split, HashTable *readset, zval *return_value)
{
	zval *k;
	ZEND_HASH_FOREACH_VAL(split, k) {
		if (Z_TYPE_P(k) != IS_STRING || Z_STRLEN_P(k) == 0) {
			return ABSORB_DECLINED;
		}
	} ZEND_HASH_FOREACH_END();
	if (!zend_array_is_list(fields) || !HT_IS_PACKED(fields) || !HT_IS_WITHOUT_HOLES(fields)) {
		return ABSORB_DECLINED;
	}
	uint32_t n = zend_hash_num_elements(fields);
	zval *f = fields->arPacked;
	for (uint32_t i = 0; i + 3 <= n; i += 3) {
		if (Z_TYPE(f[i]) != IS_STRING || Z_TYPE(f[i + 1]) != IS_LONG
				|| (Z_TYPE(f[i + 2]) != IS_STRING && Z_TYPE(f[i + 2]) != IS_NULL)) {
			return ABSORB_DECLINED;
		}
	}
	/* a split key that is also a field itself, with elements: the PHP
	 * loop's order of assignments (and its errors) decide that case */
	ZEND_HASH_FOREACH_VAL(split, k) {
		bool whole = false, parts = false;
		for (uint32_t i = 0; i + 3 <= n; i += 3) {
			if (Z_TYPE(f[i + 2]) == IS_NULL || Z_LVAL(f[i + 1]) == 0) {
				continue;
			}
			if (zend_string_equals(Z_STR(f[i]), Z_STR_P(k))) {
				whole = true;
			} else if (sd_nested_of(split, Z_STR(f[i])) == Z_STR_P(k)) {
				parts = true;
			}
		}
		if (whole && parts) {
			return ABSORB_DECLINED;
		}
	} ZEND_HASH_FOREACH_END();

	array_init(return_value);
	HashTable *data = Z_ARRVAL_P(return_value);
	for (uint32_t i = 0; i + 3 <= n; i += 3) {
		zend_string *key = Z_STR(f[i]);
		zend_long ver = Z_LVAL(f[i + 1]);
		if (Z_TYPE(f[i + 2]) == IS_NULL || ver == 0) {
			continue;
		}
		zval value, entry, zcanon;
		if (!sd_decode_value(&value, Z_STR(f[i + 2]))) {
			/* a __wakeup() threw: it goes to the caller, with the read set
			 * filled up to here as the PHP loop leaves it */
			zval_ptr_dtor(return_value);
			ZVAL_UNDEF(return_value);
			return ABSORB_THREW;
		}
		zend_string *canon = sd_encode_value(&value);
		if (canon == NULL) {
			zval_ptr_dtor(&value);
			zval_ptr_dtor(return_value);
			ZVAL_UNDEF(return_value);
			return ABSORB_THREW;
		}
		array_init_size(&entry, 2);
		add_next_index_long(&entry, ver);
		ZVAL_STR(&zcanon, canon);
		zend_hash_next_index_insert_new(Z_ARRVAL(entry), &zcanon);
		zend_symtable_update(readset, key, &entry);

		zend_string *outer = sd_nested_of(split, key);
		if (outer != NULL) {
			zend_string *inner = zend_string_init(ZSTR_VAL(key) + ZSTR_LEN(outer) + 1, ZSTR_LEN(key) - ZSTR_LEN(outer) - 1, 0);
			zval *slot = zend_symtable_find(data, outer);
			if (slot == NULL) {
				zval arr;
				array_init(&arr);
				slot = zend_symtable_update(data, outer, &arr);
			}
			/* only arrays are ever stored under a split key here (see the
			 * whole-and-parts check above) */
			SEPARATE_ARRAY(slot);
			zend_symtable_update(Z_ARRVAL_P(slot), inner, &value);
			zend_string_release(inner);
		} else {
			zend_symtable_update(data, key, &value);
		}
	}
	return ABSORB_OK;
}

PHP_FUNCTION(sessiond_absorb_fields)
{
	HashTable *fields, *split;
	zval *rs_ref;

	ZEND_PARSE_PARAMETERS_START(3, 3)
		Z_PARAM_ARRAY_HT(fields)
		Z_PARAM_ARRAY_HT(split)
		Z_PARAM_ZVAL(rs_ref)
	ZEND_PARSE_PARAMETERS_END();

	zval *rs = Z_REFVAL_P(rs_ref);
	if (Z_TYPE_P(rs) != IS_ARRAY) {
		RETURN_NULL();
	}
	SEPARATE_ARRAY(rs);
	if (sd_absorb_fields(fields, split, Z_ARRVAL_P(rs), return_value) != ABSORB_OK) {
		RETURN_NULL();
	}
}

static const zend_function_entry sessiond_functions[] = {
	ZEND_FE(sessiond_resp_parse, arginfo_sessiond_resp_parse)
	ZEND_FE(sessiond_resp_encode, arginfo_sessiond_resp_encode)
	ZEND_FE(sessiond_split_session, arginfo_sessiond_split_session)
	ZEND_FE(sessiond_absorb_fields, arginfo_sessiond_absorb_fields)
	ZEND_FE_END
};

PHP_MINIT_FUNCTION(sessiond)
{
	if (zend_register_functions(NULL, sd_handler_functions, NULL, type) != SUCCESS) {
		return FAILURE;
	}
	return sd_handler_minit();
}

PHP_MSHUTDOWN_FUNCTION(sessiond)
{
	sd_handler_mshutdown();
	return SUCCESS;
}

PHP_RINIT_FUNCTION(sessiond)
{
	sd_handler_rinit();
	return SUCCESS;
}

PHP_RSHUTDOWN_FUNCTION(sessiond)
{
	sd_handler_rshutdown();
	return SUCCESS;
}

/* after every module's RSHUTDOWN, the session module's (which writes and
 * closes the session) included */
static ZEND_MODULE_POST_ZEND_DEACTIVATE_D(sessiond)
{
	sd_handler_post_deactivate();
	return SUCCESS;
}

PHP_MINFO_FUNCTION(sessiond)
{
	php_info_print_table_start();
	php_info_print_table_header(2, "sessiond session handler helpers", "enabled");
#ifndef ZTS
	php_info_print_table_row(2, "Native save handler", "sessiond (session.save_handler = sessiond)");
#else
	php_info_print_table_row(2, "Native save handler", "not available in a thread-safe (ZTS) PHP");
#endif
	php_info_print_table_row(2, "Version", PHP_SESSIOND_VERSION);
	php_info_print_table_end();
}

static const zend_module_dep sessiond_deps[] = {
	ZEND_MOD_REQUIRED("session")
	ZEND_MOD_END
};

zend_module_entry sessiond_module_entry = {
	STANDARD_MODULE_HEADER_EX,
	NULL,
	sessiond_deps,
	"sessiond",
	sessiond_functions,
	PHP_MINIT(sessiond),
	PHP_MSHUTDOWN(sessiond),
	PHP_RINIT(sessiond),
	PHP_RSHUTDOWN(sessiond),
	PHP_MINFO(sessiond),
	PHP_SESSIOND_VERSION,
	NO_MODULE_GLOBALS,
	ZEND_MODULE_POST_ZEND_DEACTIVATE_N(sessiond),
	STANDARD_MODULE_PROPERTIES_EX
};

#ifdef COMPILE_DL_SESSIOND
ZEND_GET_MODULE(sessiond)
#endif
