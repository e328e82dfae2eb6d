/*
 * The native save handler: `session.save_handler = sessiond`.
 *
 * The same protocol, behaviour and data layout as the PHP class
 * Sessiond\SessionHandler (clients/php/src/SessionHandler.php), whose
 * comments explain each step; this file is its request path in C, for the
 * pages that need nothing but $_SESSION. What it leaves to the class: the
 * per-key API (Sessiond\Session), the framework integrations, tls:// and
 * the `tls` option, an `on_conflict` closure in the options (use
 * sessiond_set_conflict_handler()).
 *
 *   session.save_handler = sessiond
 *   session.save_path    = "tcp://127.0.0.1:6380?lock_mode=session&persistent=1"
 *   session.use_strict_mode = 1
 *
 * The options are the class's, in the query string. A request makes the
 * same round trips as the class: SESSION.EXISTS with the first read command
 * (LOCK.ACQUIRE … WAIT in `session` mode) at validate_sid, then the commit
 * (SESSION.COMMIT … FENCE t UNLOCK) at write.
 *
 * State: one request at a time per process (PHP without ZTS, which is what
 * php-fpm and `php -S` run); the socket and its read buffer outlive the
 * request when `persistent` is on, everything else is per request.
 */

#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include "php.h"
#include "php_ini.h"
#include "SAPI.h"
#include "ext/session/php_session.h"
#include "ext/standard/url.h"
#include "ext/standard/php_var.h"
#include "ext/random/php_random.h"
#include "ext/json/php_json.h"
#include "zend_smart_str.h"
#include "zend_exceptions.h"

#include "sessiond_shared.h"

#ifndef ZTS

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_NODES 16
#define MODE_SESSION 0
#define MODE_READONLY 1
#define MODE_NONE 2

static const char *const mode_names[] = {"session", "readonly", "none"};

/* MODE_* of a lock mode name, -1 when unknown */
static int mode_of(const char *name, size_t len)
{
	for (int m = 0; m < 3; m++) {
		if (strlen(mode_names[m]) == len && memcmp(mode_names[m], name, len) == 0) {
			return m;
		}
	}
	return -1;
}

/* ------------------------------------------------------------------------
 * Options (the class's DEFAULTS, from the save_path query string)
 * --------------------------------------------------------------------- */

typedef struct {
	char *node[MAX_NODES]; /* "host:port" or "/unix/path" (emalloc) */
	bool node_unix[MAX_NODES];
	int nodes;
	char *display; /* for messages */
	zend_string *password, *user, *name;
	int lock_mode;
	zend_long lock_wait_ms, lease_ms, ttl, lifetime, grace;
	double connect_timeout, timeout, failover_timeout;
	bool persistent, strict, follow_regenerate, policy_mine;
	zval split_keys, lww_keys; /* lists of strings */
} sd_config;

/* ------------------------------------------------------------------------
 * State
 * --------------------------------------------------------------------- */

typedef struct {
	zval v;          /* the reply, when err is NULL */
	zend_string *err; /* an error reply's text */
} sd_reply;

enum { SD_OK = 0, SD_CONN = 1, SD_UNKNOWN = 2 };

static struct {
	/* the socket: with `persistent`, it outlives the request */
	int fd;
	char *conn_key; /* malloc: which server and name the socket is for */
	bool conn_persistent;
	bool used;      /* an earlier request used this (persistent) socket */
	int current;    /* node index */
	char *buf;      /* malloc */
	size_t len, pos, cap;
	double last_io;
	bool sent;
	bool need_reset; /* RESET (+AUTH) goes in front of the next request */
	char err[512];   /* the last connection error */

	/* per request */
	bool configured;
	bool in_request;
	sd_config cfg;
	char *session_name;
	bool reused;
	int mode;
	int mode_override; /* -1: the lock_mode option */
	zend_string *id, *server_id, *locked_id, *validated_id;
	zend_long token;
	bool has_token;
	bool regenerating, delete_old, session_missing, fresh, active, broken;
	zval read_set;    /* key => [version, canonical encoding] */
	zval created_ids; /* id => true */
	/* what validate_sid() asked for read(): the id, the encoded command,
	 * and its reply (or an error, or "outcome unknown") */
	zend_string *pre_id;
	zend_string *pre_cmd;
	sd_reply pre_reply;
	bool pre_unknown;
	bool has_pre;
	zval conflict_handler;
} S;

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void warn(int level, const char *fmt, ...) ZEND_ATTRIBUTE_FORMAT(printf, 2, 3);
static void warn(int level, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	zend_string *msg = zend_vstrpprintf(0, fmt, ap);
	va_end(ap);
	zend_error(level, "%s", ZSTR_VAL(msg));
	zend_string_release(msg);
}

/* Session ids are secrets: only a prefix goes into messages. */
static const char *short_id(zend_string *id, char *out, size_t n)
{
	snprintf(out, n, "\"%.8s%s\"", ZSTR_VAL(id), ZSTR_LEN(id) > 8 ? "…" : "");
	return out;
}

static bool valid_id(zend_string *id)
{
	size_t n = ZSTR_LEN(id);
	if (n < 1 || n > 128) {
		return false;
	}
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)ZSTR_VAL(id)[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
				|| c == ',' || c == '.' || c == '_' || c == ':' || c == '-')) {
			return false;
		}
	}
	return true;
}

static void reply_free(sd_reply *r)
{
	if (r->err) {
		zend_string_release(r->err);
		r->err = NULL;
	}
	zval_ptr_dtor(&r->v);
	ZVAL_UNDEF(&r->v);
}

/* An error reply's code is `code`: "TRYAGAIN …" is("TRYAGAIN"). */
static bool err_is(const sd_reply *r, const char *code)
{
	if (r->err == NULL) {
		return false;
	}
	size_t n = strlen(code);
	return ZSTR_LEN(r->err) >= n && memcmp(ZSTR_VAL(r->err), code, n) == 0
		&& (ZSTR_LEN(r->err) == n || ZSTR_VAL(r->err)[n] == ' ');
}

static void set_str(zend_string **slot, zend_string *v)
{
	if (*slot) {
		zend_string_release(*slot);
	}
	*slot = v ? zend_string_copy(v) : NULL;
}

static void clear_prefetched(void)
{
	if (S.has_pre) {
		set_str(&S.pre_id, NULL);
		set_str(&S.pre_cmd, NULL);
		reply_free(&S.pre_reply);
	}
	S.has_pre = false;
	S.pre_unknown = false;
}

/* ------------------------------------------------------------------------
 * Configuration
 * --------------------------------------------------------------------- */

static void config_free(sd_config *c)
{
	for (int i = 0; i < c->nodes; i++) {
		efree(c->node[i]);
	}
	c->nodes = 0;
	if (c->display) {
		efree(c->display);
		c->display = NULL;
	}
	set_str(&c->password, NULL);
	set_str(&c->user, NULL);
	set_str(&c->name, NULL);
	zval_ptr_dtor(&c->split_keys);
	zval_ptr_dtor(&c->lww_keys);
	ZVAL_UNDEF(&c->split_keys);
	ZVAL_UNDEF(&c->lww_keys);
}

static bool parse_bool(const char *v)
{
	return strcasecmp(v, "1") == 0 || strcasecmp(v, "true") == 0 || strcasecmp(v, "on") == 0 || strcasecmp(v, "yes") == 0;
}

static void parse_list(zval *out, const char *v)
{
	zval_ptr_dtor(out);
	array_init(out);
	const char *p = v;
	while (*p) {
		const char *comma = strchr(p, ',');
		size_t n = comma ? (size_t)(comma - p) : strlen(p);
		add_next_index_stringl(out, p, n);
		if (!comma) {
			break;
		}
		p = comma + 1;
	}
}

/* One option from the query string; false with *why set when it is wrong. */
static bool set_option(sd_config *c, const char *k, char *v, const char **why)
{
	char *end;
#define LONG_OPT(name, field, empty)                           \
	if (strcmp(k, name) == 0) {                                \
		if (*v == '\0') {                                      \
			c->field = (empty);                                \
			return true;                                       \
		}                                                      \
		c->field = ZEND_STRTOL(v, &end, 10);                   \
		return true;                                           \
	}
	LONG_OPT("lock_wait_ms", lock_wait_ms, 30000)
	LONG_OPT("lease_ms", lease_ms, -1)
	LONG_OPT("ttl", ttl, -1)
	LONG_OPT("lifetime", lifetime, 0)
	LONG_OPT("regenerate_grace", grace, -1)
#undef LONG_OPT
	if (strcmp(k, "connect_timeout") == 0) {
		c->connect_timeout = zend_strtod(v, NULL);
	} else if (strcmp(k, "timeout") == 0) {
		c->timeout = zend_strtod(v, NULL);
	} else if (strcmp(k, "failover_timeout") == 0) {
		c->failover_timeout = zend_strtod(v, NULL);
	} else if (strcmp(k, "persistent") == 0) {
		c->persistent = parse_bool(v);
	} else if (strcmp(k, "strict") == 0) {
		c->strict = parse_bool(v);
	} else if (strcmp(k, "follow_regenerate") == 0) {
		c->follow_regenerate = parse_bool(v);
	} else if (strcmp(k, "password") == 0) {
		set_str(&c->password, NULL);
		c->password = zend_string_init(v, strlen(v), 0);
	} else if (strcmp(k, "user") == 0) {
		set_str(&c->user, NULL);
		c->user = zend_string_init(v, strlen(v), 0);
	} else if (strcmp(k, "name") == 0) {
		set_str(&c->name, NULL);
		c->name = zend_string_init(v, strlen(v), 0);
	} else if (strcmp(k, "lock_mode") == 0) {
		int m = mode_of(v, strlen(v));
		if (m >= 0) {
			c->lock_mode = m;
			return true;
		}
		static char msg[200];
		snprintf(msg, sizeof(msg), "unknown lock_mode '%.100s' (session, readonly or none)", v);
		*why = msg;
		return false;
	} else if (strcmp(k, "conflict_policy") == 0) {
		if (strcmp(v, "mine") != 0 && strcmp(v, "theirs") != 0) {
			*why = "unknown conflict_policy (theirs or mine)";
			return false;
		}
		c->policy_mine = strcmp(v, "mine") == 0;
	} else if (strcmp(k, "split_keys") == 0) {
		parse_list(&c->split_keys, v);
	} else if (strcmp(k, "lww_keys") == 0) {
		parse_list(&c->lww_keys, v);
	} else if (strcmp(k, "tls") == 0 || strncmp(k, "tls[", 4) == 0) {
		*why = "TLS is not supported by the native handler (use Sessiond\\SessionHandler::register())";
		return false;
	} else if (strcmp(k, "on_conflict") == 0) {
		*why = "on_conflict cannot be given in save_path (use sessiond_set_conflict_handler())";
		return false;
	} else {
		*why = NULL;
		return false;
	}
	return true;
}

/* Connection::parseUri() for the native handler. false: *msg says why. */
static bool config_parse(sd_config *c, const char *path, char **msg)
{
	memset(c, 0, sizeof(*c));
	c->lock_mode = MODE_SESSION;
	c->lock_wait_ms = 30000;
	c->lease_ms = -1;
	c->ttl = -1;
	c->grace = -1;
	c->connect_timeout = 2.0;
	c->timeout = 5.0;
	c->failover_timeout = 10.0;
	c->strict = true;
	c->follow_regenerate = true;
	array_init(&c->split_keys);
	add_next_index_string(&c->split_keys, "_sf2_attributes");
	add_next_index_string(&c->split_keys, "_symfony_flashes");
	array_init(&c->lww_keys);
	add_next_index_string(&c->lww_keys, "_sf2_meta");

	while (*path == ' ') {
		path++;
	}
	if (*path == '\0') {
		*msg = estrdup("sessiond: session.save_path is empty (set it to tcp://host:port)");
		return false;
	}
	char *uri = estrdup(path);
	char *q = strchr(uri, '?');
	if (q) {
		*q++ = '\0';
	}
	char *rest = uri;
	char *sep = strstr(uri, "://");
	bool is_unix = false;
	if (sep) {
		size_t sl = (size_t)(sep - uri);
		if (sl == 4 && strncasecmp(uri, "unix", 4) == 0) {
			is_unix = true;
		} else if ((sl == 3 && strncasecmp(uri, "tls", 3) == 0) || (sl == 6 && strncasecmp(uri, "rediss", 6) == 0)) {
			*msg = estrdup("sessiond: tls:// is not supported by the native handler (use Sessiond\\SessionHandler::register() with tls://)");
			efree(uri);
			return false;
		} else if (!((sl == 3 && strncasecmp(uri, "tcp", 3) == 0) || (sl == 5 && strncasecmp(uri, "redis", 5) == 0)
				|| (sl == 8 && strncasecmp(uri, "sessiond", 8) == 0))) {
			*msg = estrdup("sessiond: unsupported scheme in session.save_path (use tcp:// or unix://)");
			efree(uri);
			return false;
		}
		rest = sep + 3;
	}
	if (is_unix) {
		c->node[0] = estrdup(rest);
		c->node_unix[0] = true;
		c->nodes = 1;
	} else {
		char *save = NULL;
		for (char *part = php_strtok_r(rest, ",", &save); part; part = php_strtok_r(NULL, ",", &save)) {
			while (*part == ' ') {
				part++;
			}
			if (*part == '\0') {
				continue;
			}
			char *s2 = strstr(part, "://");
			if (s2) {
				part = s2 + 3;
			}
			if (c->nodes == MAX_NODES) {
				*msg = estrdup("sessiond: too many nodes in session.save_path");
				efree(uri);
				return false;
			}
			char *full;
			spprintf(&full, 0, "tcp://%s", part);
			php_url *u = php_url_parse_ex(full, strlen(full));
			efree(full);
			if (u == NULL || u->host == NULL) {
				if (u) {
					php_url_free(u);
				}
				*msg = estrdup("sessiond: cannot parse session.save_path");
				efree(uri);
				return false;
			}
			if (u->pass && c->password == NULL) {
				c->password = zend_string_init(ZSTR_VAL(u->pass), ZSTR_LEN(u->pass), 0);
				ZSTR_LEN(c->password) = php_raw_url_decode(ZSTR_VAL(c->password), ZSTR_LEN(c->password));
			}
			if (u->user && ZSTR_LEN(u->user) > 0 && c->user == NULL) {
				c->user = zend_string_init(ZSTR_VAL(u->user), ZSTR_LEN(u->user), 0);
				ZSTR_LEN(c->user) = php_raw_url_decode(ZSTR_VAL(c->user), ZSTR_LEN(c->user));
			}
			spprintf(&c->node[c->nodes], 0, "%s:%d", ZSTR_VAL(u->host), u->port ? u->port : 6380);
			c->nodes++;
			php_url_free(u);
		}
		if (c->nodes == 0) {
			*msg = estrdup("sessiond: cannot parse session.save_path");
			efree(uri);
			return false;
		}
	}
	smart_str d = {0};
	for (int i = 0; i < c->nodes; i++) {
		smart_str_appends(&d, i == 0 ? (c->node_unix[i] ? "unix://" : "tcp://") : ",");
		smart_str_appends(&d, c->node[i]);
	}
	smart_str_0(&d);
	c->display = estrdup(ZSTR_VAL(d.s));
	smart_str_free(&d);

	if (q) {
		char *save = NULL;
		for (char *pair = php_strtok_r(q, "&", &save); pair; pair = php_strtok_r(NULL, "&", &save)) {
			char *eq = strchr(pair, '=');
			char *v = eq ? eq + 1 : pair + strlen(pair);
			if (eq) {
				*eq = '\0';
			}
			php_url_decode(pair, strlen(pair));
			size_t vl = php_url_decode(v, strlen(v));
			v[vl] = '\0';
			const char *why = NULL;
			if (!set_option(c, pair, v, &why)) {
				if (why) {
					spprintf(msg, 0, "sessiond: option %s in session.save_path: %s", pair, why);
				} else {
					spprintf(msg, 0, "sessiond: unknown option '%s' in session.save_path; valid options: lock_mode, lock_wait_ms, lease_ms, connect_timeout, timeout, failover_timeout, persistent, password, user, name, ttl, lifetime, regenerate_grace, conflict_policy, strict, follow_regenerate, split_keys, lww_keys", pair);
				}
				efree(uri);
				return false;
			}
		}
	}
	efree(uri);
	return true;
}

/* ------------------------------------------------------------------------
 * The connection (Connection.php)
 * --------------------------------------------------------------------- */

/* a node as the class names it: tcp://host:port or unix:///path */
static const char *node_addr(void)
{
	static char a[300];
	snprintf(a, sizeof(a), "%s%s", S.cfg.node_unix[S.current] ? "unix://" : "tcp://", S.cfg.node[S.current]);
	return a;
}

static void conn_close(void)
{
	if (S.fd >= 0) {
		close(S.fd);
	}
	S.fd = -1;
	S.len = S.pos = 0;
	S.used = false;
	S.need_reset = false;
}

static void move_on(void)
{
	conn_close();
	if (S.cfg.nodes > 0) {
		S.current = (S.current + 1) % S.cfg.nodes;
	}
}

static bool wait_fd(short events, double deadline)
{
	for (;;) {
		double left = deadline - now();
		if (left < 0) {
			left = 0;
		}
		struct pollfd p = {S.fd, events, 0};
		int r = poll(&p, 1, (int)(left * 1000) + (left > 0 ? 1 : 0));
		if (r > 0) {
			return true;
		}
		if (r == 0) {
			return false;
		}
		if (errno != EINTR) {
			return false;
		}
	}
}

static bool connect_one(int idx)
{
	const char *node = S.cfg.node[idx];
	double deadline = now() + S.cfg.connect_timeout;
	int fd = -1;
	if (S.cfg.node_unix[idx]) {
		struct sockaddr_un sa;
		memset(&sa, 0, sizeof(sa));
		sa.sun_family = AF_UNIX;
		if (strlen(node) >= sizeof(sa.sun_path)) {
			snprintf(S.err, sizeof(S.err), "sessiond: cannot connect to unix://%s: path too long", node);
			return false;
		}
		strcpy(sa.sun_path, node);
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
			snprintf(S.err, sizeof(S.err), "sessiond: cannot connect to unix://%s: %s (errno %d)", node, strerror(errno), errno);
			if (fd >= 0) {
				close(fd);
			}
			return false;
		}
		fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	} else {
		char host[256];
		const char *colon = strrchr(node, ':');
		size_t hl = (size_t)(colon - node);
		if (hl >= sizeof(host)) {
			hl = sizeof(host) - 1;
		}
		memcpy(host, node, hl);
		host[hl] = '\0';
		char *h = host;
		if (h[0] == '[' && hl > 1 && h[hl - 1] == ']') { /* [::1] */
			h[hl - 1] = '\0';
			h++;
		}
		struct addrinfo hints, *res = NULL;
		memset(&hints, 0, sizeof(hints));
		hints.ai_socktype = SOCK_STREAM;
		hints.ai_flags = AI_NUMERICSERV;
		int gai = getaddrinfo(h, colon + 1, &hints, &res);
		if (gai != 0) {
			snprintf(S.err, sizeof(S.err), "sessiond: cannot connect to tcp://%s: %s", node, gai_strerror(gai));
			return false;
		}
		int last = 0;
		for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
			fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
			if (fd < 0) {
				last = errno;
				continue;
			}
			if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
				break;
			}
			if (errno == EINPROGRESS) {
				S.fd = fd;
				bool ready = wait_fd(POLLOUT, deadline);
				S.fd = -1;
				int soerr = 0;
				socklen_t sl = sizeof(soerr);
				if (ready && getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && soerr == 0) {
					break;
				}
				last = ready ? soerr : ETIMEDOUT;
			} else {
				last = errno;
			}
			close(fd);
			fd = -1;
		}
		freeaddrinfo(res);
		if (fd < 0) {
			snprintf(S.err, sizeof(S.err), "sessiond: cannot connect to tcp://%s: %s (errno %d)", node, strerror(last), last);
			return false;
		}
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	}
	S.fd = fd;
	S.len = S.pos = 0;
	S.last_io = now();
	S.used = false;
	S.need_reset = false;
	return true;
}

static bool write_all(const char *data, size_t n, double deadline)
{
	size_t done = 0;
	while (done < n) {
		ssize_t w = send(S.fd, data + done, n - done, MSG_NOSIGNAL);
		if (w > 0) {
			done += (size_t)w;
			S.sent = true;
			continue;
		}
		if (w < 0 && errno == EINTR) {
			continue;
		}
		if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && wait_fd(POLLOUT, deadline)) {
			continue;
		}
		snprintf(S.err, sizeof(S.err), "sessiond: %s (%s)",
			(w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) ? "write timed out" : "connection closed while writing",
			node_addr());
		return false;
	}
	return true;
}

static bool fill(double deadline)
{
	if (S.pos > 0 && S.pos == S.len) {
		S.pos = S.len = 0;
	} else if (S.pos > 0 && S.pos > S.cap / 2) {
		memmove(S.buf, S.buf + S.pos, S.len - S.pos);
		S.len -= S.pos;
		S.pos = 0;
	}
	if (S.cap - S.len < 16384) {
		S.cap = S.cap ? S.cap * 2 : 65536;
		S.buf = realloc(S.buf, S.cap);
		if (S.buf == NULL) {
			zend_error_noreturn(E_ERROR, "sessiond: out of memory");
		}
	}
	for (;;) {
		ssize_t r = recv(S.fd, S.buf + S.len, S.cap - S.len, 0);
		if (r > 0) {
			S.len += (size_t)r;
			return true;
		}
		if (r == 0) {
			snprintf(S.err, sizeof(S.err), "sessiond: connection to %s closed by the server", node_addr());
			return false;
		}
		if (errno == EINTR) {
			continue;
		}
		if ((errno == EAGAIN || errno == EWOULDBLOCK)) {
			if (wait_fd(POLLIN, deadline)) {
				continue;
			}
			snprintf(S.err, sizeof(S.err), "sessiond: no reply from %s within the timeout", node_addr());
			return false;
		}
		snprintf(S.err, sizeof(S.err), "sessiond: read failed from %s: %s", node_addr(), strerror(errno));
		return false;
	}
}

static bool resp_int_ok(const char *s, size_t n)
{
	size_t i = (n > 0 && s[0] == '-') ? 1 : 0;
	if (i == n) {
		return false;
	}
	for (; i < n; i++) {
		if (s[i] < '0' || s[i] > '9') {
			return false;
		}
	}
	return true;
}

/* What is wrong with the reply at buf[pos..len) that the parser declined,
 * in the class's words (Connection::readReply()). */
static void diagnose_reply(size_t pos)
{
	const char *b = S.buf;
	size_t p = pos;
	for (int guard = 0; p < S.len && guard < 100000; guard++) {
		const char *e = zend_memnstr(b + p, "\r\n", 2, b + S.len);
		if (e == NULL) {
			break;
		}
		size_t l = (size_t)(e - (b + p));
		if (l == 0) {
			snprintf(S.err, sizeof(S.err), "sessiond: protocol error: empty reply line");
			return;
		}
		char t = b[p];
		const char *rest = b + p + 1;
		size_t rl = l - 1;
		if (strchr(":$*%~=>|!", t)) {
			if (!resp_int_ok(rest, rl)) {
				zval z;
				smart_str js = {0};
				ZVAL_STRINGL(&z, rest, rl);
				php_json_encode(&js, &z, 0);
				smart_str_0(&js);
				snprintf(S.err, sizeof(S.err), "sessiond: protocol error: bad integer %.200s", js.s ? ZSTR_VAL(js.s) : "");
				smart_str_free(&js);
				zval_ptr_dtor(&z);
				return;
			}
		} else if (!strchr("+-_#,(", t)) {
			snprintf(S.err, sizeof(S.err), "sessiond: protocol error: unexpected reply type \"%c\"", t);
			return;
		}
		p += l + 2;
		if (t == '$' || t == '=' || t == '!') {
			zend_long n = ZEND_STRTOL(rest, NULL, 10);
			if (n > 0) {
				p += (size_t)n + 2;
			}
		}
	}
	snprintf(S.err, sizeof(S.err), "sessiond: protocol error: unexpected reply from %s", node_addr());
}

/* One reply. Error replies (`-…` and `!…`) come back in r->err. */
static bool read_reply(sd_reply *r, double deadline)
{
	ZVAL_UNDEF(&r->v);
	r->err = NULL;
	for (;;) {
		if (S.len > S.pos) {
			char t = S.buf[S.pos];
			if (t == '-') {
				char *e = memchr(S.buf + S.pos, '\n', S.len - S.pos);
				if (e) {
					size_t l = (size_t)(e - (S.buf + S.pos));
					if (l < 2 || e[-1] != '\r') {
						break;
					}
					r->err = zend_string_init(S.buf + S.pos + 1, l - 2, 0);
					S.pos += l + 1;
					return true;
				}
			} else if (t == '!') {
				char *e = memchr(S.buf + S.pos, '\n', S.len - S.pos);
				if (e) {
					zend_long n = ZEND_STRTOL(S.buf + S.pos + 1, NULL, 10);
					size_t hl = (size_t)(e - (S.buf + S.pos)) + 1;
					if (n < 0 || n > 1 << 20) {
						break;
					}
					if (S.len - S.pos >= hl + (size_t)n + 2) {
						r->err = zend_string_init(S.buf + S.pos + hl, (size_t)n, 0);
						S.pos += hl + (size_t)n + 2;
						return true;
					}
				}
			} else {
				size_t p = S.pos;
				parse_rc rc = sd_resp_parse(S.buf, S.len, &p, &r->v, 0);
				if (rc == PARSED) {
					S.pos = p;
					return true;
				}
				if (rc != INCOMPLETE) {
					if (rc == THREW) {
						zend_clear_exception();
					}
					break;
				}
			}
		}
		if (!fill(deadline)) {
			return false;
		}
	}
	diagnose_reply(S.pos);
	return false;
}

static void append_cmd(smart_str *out, int argc, const char *const *argv, const size_t *lens)
{
	smart_str_appendc(out, '*');
	smart_str_append_long(out, argc);
	smart_str_appendl(out, "\r\n", 2);
	for (int i = 0; i < argc; i++) {
		smart_str_appendc(out, '$');
		smart_str_append_long(out, (zend_long)lens[i]);
		smart_str_appendl(out, "\r\n", 2);
		smart_str_appendl(out, argv[i], lens[i]);
		smart_str_appendl(out, "\r\n", 2);
	}
}

/* A command under construction: the arguments' RESP and their count. */
typedef struct {
	smart_str body;
	int argc;
} sd_cmd;

static void c_arg(sd_cmd *c, const char *s, size_t n)
{
	smart_str_appendc(&c->body, '$');
	smart_str_append_long(&c->body, (zend_long)n);
	smart_str_appendl(&c->body, "\r\n", 2);
	smart_str_appendl(&c->body, s, n);
	smart_str_appendl(&c->body, "\r\n", 2);
	c->argc++;
}
#define c_lit(c, s) c_arg((c), (s), sizeof(s) - 1)
static void c_str(sd_cmd *c, zend_string *s)
{
	c_arg(c, ZSTR_VAL(s), ZSTR_LEN(s));
}
static void c_long(sd_cmd *c, zend_long v)
{
	char tmp[MAX_LENGTH_OF_LONG + 1];
	char *s = zend_print_long_to_buf(tmp + sizeof(tmp) - 1, v);
	c_arg(c, s, (size_t)(tmp + sizeof(tmp) - 1 - s));
}
/* appends the finished command to out and frees it */
static void c_end(sd_cmd *c, smart_str *out)
{
	smart_str_appendc(out, '*');
	smart_str_append_long(out, c->argc);
	smart_str_appendl(out, "\r\n", 2);
	if (c->body.s) {
		smart_str_append(out, c->body.s);
	}
	smart_str_free(&c->body);
	c->argc = 0;
}

static void c_reqid(sd_cmd *c)
{
	unsigned char raw[12];
	char hex[4 + 24];
	if (php_random_bytes_silent(raw, sizeof(raw)) != SUCCESS) {
		for (size_t i = 0; i < sizeof(raw); i++) {
			raw[i] = (unsigned char)(rand() & 0xff);
		}
	}
	memcpy(hex, "php-", 4);
	for (size_t i = 0; i < sizeof(raw); i++) {
		hex[4 + 2 * i] = "0123456789abcdef"[raw[i] >> 4];
		hex[5 + 2 * i] = "0123456789abcdef"[raw[i] & 15];
	}
	c_lit(c, "REQID");
	c_arg(c, hex, sizeof(hex));
}

/* Authentication and name on a new socket; false: S.err says why. */
static bool conn_setup(double deadline)
{
	smart_str out = {0};
	int n = 0;
	const char *argv[3];
	size_t lens[3];
	if (S.cfg.password && ZSTR_LEN(S.cfg.password) > 0) {
		argv[0] = "AUTH";
		lens[0] = 4;
		int k = 1;
		if (S.cfg.user && ZSTR_LEN(S.cfg.user) > 0) {
			argv[k] = ZSTR_VAL(S.cfg.user);
			lens[k++] = ZSTR_LEN(S.cfg.user);
		}
		argv[k] = ZSTR_VAL(S.cfg.password);
		lens[k++] = ZSTR_LEN(S.cfg.password);
		append_cmd(&out, k, argv, lens);
		n++;
	}
	if (S.cfg.name && ZSTR_LEN(S.cfg.name) > 0 && !S.need_reset) {
		argv[0] = "CLIENT";
		lens[0] = 6;
		argv[1] = "SETNAME";
		lens[1] = 7;
		argv[2] = ZSTR_VAL(S.cfg.name);
		lens[2] = ZSTR_LEN(S.cfg.name);
		append_cmd(&out, 3, argv, lens);
		n++;
	}
	if (n == 0) {
		return true;
	}
	bool ok = write_all(ZSTR_VAL(out.s), ZSTR_LEN(out.s), deadline);
	smart_str_free(&out);
	for (int i = 0; ok && i < n; i++) {
		sd_reply r;
		if (!read_reply(&r, deadline)) {
			ok = false;
			break;
		}
		if (r.err) {
			snprintf(S.err, sizeof(S.err), "sessiond: connection setup failed on %s: %s", node_addr(), ZSTR_VAL(r.err));
			ok = false;
		}
		reply_free(&r);
	}
	if (!ok) {
		conn_close();
	}
	return ok;
}

static char *make_conn_key(void)
{
	char *k;
	spprintf(&k, 0, "%s|%s|%s|%s", S.cfg.display, S.cfg.name ? ZSTR_VAL(S.cfg.name) : "",
		S.cfg.user ? ZSTR_VAL(S.cfg.user) : "", S.cfg.password ? ZSTR_VAL(S.cfg.password) : "");
	char *p = strdup(k);
	efree(k);
	return p;
}

/* Connects to the current node, else the next ones, each once. */
static bool conn_connect(void)
{
	if (S.fd >= 0) {
		return true;
	}
	for (int i = 0; i < S.cfg.nodes; i++) {
		int idx = (S.current + i) % S.cfg.nodes;
		if (connect_one(idx)) {
			S.current = idx;
			if (!conn_setup(now() + S.cfg.timeout)) {
				continue;
			}
			free(S.conn_key);
			S.conn_key = make_conn_key();
			S.conn_persistent = S.cfg.persistent;
			return true;
		}
	}
	if (S.cfg.nodes > 1) {
		char last[sizeof(S.err)];
		memcpy(last, S.err, sizeof(last));
		snprintf(S.err, sizeof(S.err), "sessiond: no node of %s answered; last: %.300s", S.cfg.display, last);
	}
	return false;
}

/* A reused socket: open, nothing unread (a request that died mid-reply
 * leaves bytes behind: such a socket is never reused). */
static bool conn_idle_ok(void)
{
	if (S.len > S.pos) {
		return false;
	}
	struct pollfd p = {S.fd, POLLIN, 0};
	if (poll(&p, 1, 0) == 0) {
		return true;
	}
	return false;
}

/* A peer that closed this idle socket (it died or restarted between
 * requests): nothing of this request was sent yet. */
static bool peer_gone(void)
{
	if (S.len > S.pos) {
		return false;
	}
	struct pollfd p = {S.fd, POLLIN, 0};
	if (poll(&p, 1, 0) <= 0) {
		return false;
	}
	char c;
	ssize_t r = recv(S.fd, &c, 1, MSG_PEEK);
	return r <= 0 && !(r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
}

static const char reset_cmd[] = "*1\r\n$5\r\nRESET\r\n";

/* One round trip on the current socket: the commands in req (ncmds of
 * them), replies into out. false: the socket is closed, S.err says why and
 * S.sent whether any byte went out. */
static bool exchange(const char *req, size_t reqlen, int ncmds, double extra_wait, bool first_error_ends, sd_reply *out)
{
	smart_str all = {0};
	bool prefix = S.need_reset;
	int auth = 0;
	if (prefix) {
		smart_str_appendl(&all, reset_cmd, sizeof(reset_cmd) - 1);
		if (S.cfg.password && ZSTR_LEN(S.cfg.password) > 0) {
			sd_cmd c = {{0}, 0};
			c_lit(&c, "AUTH");
			if (S.cfg.user && ZSTR_LEN(S.cfg.user) > 0) {
				c_str(&c, S.cfg.user);
			}
			c_str(&c, S.cfg.password);
			c_end(&c, &all);
			auth = 1;
		}
		smart_str_appendl(&all, req, reqlen);
		req = ZSTR_VAL(all.s);
		reqlen = ZSTR_LEN(all.s);
	}
	S.sent = false;
	double deadline = now() + S.cfg.timeout;
	bool ok = write_all(req, reqlen, deadline);
	smart_str_free(&all);
	if (!ok) {
		conn_close();
		return false;
	}
	if (prefix) {
		/* whatever an earlier request left unread (the reply to a lock
		 * wait that RESET cancelled), up to +RESET, then AUTH's */
		for (int stale = 0;; stale++) {
			while (S.len - S.pos < 8) {
				if (!fill(deadline)) {
					conn_close();
					return false;
				}
			}
			if (memcmp(S.buf + S.pos, "+RESET\r\n", 8) == 0) {
				S.pos += 8;
				break;
			}
			sd_reply junk;
			if (stale >= 16 || !read_reply(&junk, deadline)) {
				if (stale >= 16) {
					snprintf(S.err, sizeof(S.err), "sessiond: protocol error: no RESET reply from %s", node_addr());
				}
				conn_close();
				return false;
			}
			reply_free(&junk);
		}
		S.need_reset = false;
		for (int i = 0; i < auth; i++) {
			sd_reply a;
			if (!read_reply(&a, deadline)) {
				conn_close();
				return false;
			}
			if (a.err) {
				snprintf(S.err, sizeof(S.err), "sessiond: connection setup failed on %s: %s", node_addr(), ZSTR_VAL(a.err));
				reply_free(&a);
				conn_close();
				return false;
			}
			reply_free(&a);
		}
	}
	for (int i = 0; i < ncmds; i++) {
		if (!read_reply(&out[i], i == ncmds - 1 ? deadline + extra_wait : deadline)) {
			for (int j = 0; j < i; j++) {
				reply_free(&out[j]);
			}
			conn_close();
			return false;
		}
		if (i == 0 && first_error_ends && ncmds > 1 && out[0].err) {
			conn_close();
			for (int j = 1; j < ncmds; j++) {
				ZVAL_UNDEF(&out[j].v);
				out[j].err = zend_string_copy(out[0].err);
			}
			return true;
		}
	}
	S.last_io = now();
	return true;
}

static double pause_for(double backoff, double deadline)
{
	double left = deadline - now();
	if (left > 0) {
		usleep((useconds_t)((backoff < left ? backoff : left) * 1e6));
	}
	return backoff * 2 < 0.5 ? backoff * 2 : 0.5;
}

/* Connection::pipeline(): one round trip, failing over between nodes.
 * reads: every command only reads (sent again after a lost reply).
 * SD_OK with ncmds replies in out; SD_CONN (S.err; nothing applied, or
 * reads only); SD_UNKNOWN (sent, reply lost: it may have been applied). */
static int pipeline(const char *req, size_t reqlen, int ncmds, double extra_wait, bool first_error_ends, bool reads, sd_reply *out)
{
	double deadline = now() + S.cfg.failover_timeout;
	double backoff = 0.025;
	bool cluster = S.cfg.nodes > 1;
	for (;;) {
		bool more = now() < deadline;
		bool more_nodes = cluster && more;
		if (S.fd >= 0 && now() - S.last_io > 0.01 && peer_gone()) {
			move_on();
		}
		if (!conn_connect()) {
			if (!more_nodes) {
				return SD_CONN;
			}
			backoff = pause_for(backoff, deadline);
			continue;
		}
		if (!exchange(req, reqlen, ncmds, extra_wait, first_error_ends, out)) {
			bool sent = S.sent;
			move_on();
			if (!sent || reads) {
				if (more_nodes) {
					backoff = pause_for(backoff, deadline);
					continue;
				}
				return SD_CONN;
			}
			size_t l = strlen(S.err);
			snprintf(S.err + l, sizeof(S.err) - l, " after the request was sent: it may or may not have been applied");
			return SD_UNKNOWN;
		}
		bool again = true;
		for (int i = 0; i < ncmds; i++) {
			again = again && (err_is(&out[i], "TRYAGAIN") || (reads && err_is(&out[i], "UNKNOWN")));
		}
		if (!again || !more) {
			return SD_OK;
		}
		for (int i = 0; i < ncmds; i++) {
			reply_free(&out[i]);
		}
		if (!S.has_token) {
			move_on();
		}
		backoff = pause_for(backoff, deadline);
	}
}

/* One command; its reply (an error reply too) in *r. */
static int command1(sd_cmd *c, bool reads, double extra_wait, sd_reply *r)
{
	smart_str req = {0};
	c_end(c, &req);
	int rc = pipeline(ZSTR_VAL(req.s), ZSTR_LEN(req.s), 1, extra_wait, false, reads, r);
	smart_str_free(&req);
	return rc;
}

/* SessionHandler::commandOnce(): with a REQID, sent again (same id) while
 * its outcome is unknown, until failover_timeout. */
static int command_once(sd_cmd *c, sd_reply *r)
{
	c_reqid(c);
	smart_str req = {0};
	c_end(c, &req);
	double until = now() + S.cfg.failover_timeout;
	int rc;
	for (int attempt = 1;; attempt++) {
		rc = pipeline(ZSTR_VAL(req.s), ZSTR_LEN(req.s), 1, 0, false, false, r);
		bool unknown = rc == SD_UNKNOWN || (rc == SD_OK && err_is(r, "UNKNOWN"));
		if (!unknown || now() >= until) {
			break;
		}
		if (rc == SD_OK) {
			reply_free(r);
		}
		usleep((useconds_t)(attempt >= 5 ? 500000 : (25000 << attempt)));
	}
	smart_str_free(&req);
	return rc;
}

/* ------------------------------------------------------------------------
 * Handler helpers
 * --------------------------------------------------------------------- */

static zend_long ttl(void)
{
	zend_long t = S.cfg.ttl >= 0 ? S.cfg.ttl : INI_INT("session.gc_maxlifetime");
	return t < 1 ? 1 : t;
}

static void c_lifetime(sd_cmd *c)
{
	if (S.cfg.lifetime > 0) {
		c_lit(c, "LIFETIME");
		c_long(c, S.cfg.lifetime);
	}
}

static bool strict(void)
{
	return INI_INT("session.use_strict_mode") != 0;
}

static void fail_msg(const sd_reply *r, int rc, const char *suffix)
{
	if (rc != SD_OK) {
		warn(E_WARNING, "%s%s", S.err, suffix);
	} else if (r->err) {
		warn(E_WARNING, "sessiond: %s replied with an error: %s%s", S.cfg.display, ZSTR_VAL(r->err), suffix);
	} else {
		warn(E_WARNING, "sessiond: protocol error: unexpected reply from %s%s", S.cfg.display, suffix);
	}
}

static void release_lock(void)
{
	if (!S.has_token) {
		return;
	}
	zend_long tok = S.token;
	zend_string *id = S.locked_id;
	S.locked_id = NULL;
	S.has_token = false;
	sd_cmd c = {{0}, 0};
	c_lit(&c, "LOCK.RELEASE");
	c_str(&c, id);
	c_long(&c, tok);
	sd_reply r;
	int rc = command1(&c, false, 0, &r);
	if (rc == SD_OK) {
		reply_free(&r);
	} else {
		conn_close(); /* closing it releases the lock server-side */
	}
	zend_string_release(id);
}

static void take_lock(zend_long token, zend_string *id)
{
	S.token = token;
	S.has_token = true;
	set_str(&S.locked_id, id);
}

static void drop_token(void)
{
	S.has_token = false;
	set_str(&S.locked_id, NULL);
}

static bool is_created(zend_string *id)
{
	return zend_hash_exists(Z_ARRVAL(S.created_ids), id);
}

static void add_created(zend_string *id)
{
	zend_hash_add_empty_element(Z_ARRVAL(S.created_ids), id);
}

/* Whether `fn` (a PHP function, not a method) is on the call stack. */
static bool called_from(const char *fn)
{
	size_t n = strlen(fn);
	zend_execute_data *ex = EG(current_execute_data);
	for (int i = 0; ex && i < 8; i++, ex = ex->prev_execute_data) {
		if (ex->func && ex->func->common.function_name && !ex->func->common.scope
				&& ZSTR_LEN(ex->func->common.function_name) == n
				&& memcmp(ZSTR_VAL(ex->func->common.function_name), fn, n) == 0) {
			return true;
		}
	}
	return false;
}

static zval *http_global(int track, const char *name, size_t len)
{
	zend_string *g = zend_string_init(name, len, 0);
	zend_is_auto_global(g);
	zend_string_release(g);
	zval *arr = &PG(http_globals)[track];
	return Z_TYPE_P(arr) == IS_ARRAY ? arr : NULL;
}

static bool sent_by_client(zend_string *id)
{
	const char *name = S.session_name ? S.session_name : "PHPSESSID";
	size_t nl = strlen(name);
	int tracks[3] = {TRACK_VARS_COOKIE, TRACK_VARS_GET, TRACK_VARS_POST};
	const char *gl[3] = {"_COOKIE", "_GET", "_POST"};
	int upto = INI_INT("session.use_only_cookies") ? 1 : 3;
	for (int t = 0; t < upto; t++) {
		zval *arr = http_global(tracks[t], gl[t], strlen(gl[t]));
		if (!arr) {
			continue;
		}
		zval *v = zend_symtable_str_find(Z_ARRVAL_P(arr), name, nl);
		if (v && Z_TYPE_P(v) == IS_STRING && zend_string_equals(Z_STR_P(v), id)) {
			return true;
		}
	}
	return false;
}

/* The cookie with the new id, for a request that came with a regenerate
 * alias (SessionHandler::followRegenerate()). */
static void follow_regenerate(zend_string *new_id)
{
	if (!S.cfg.follow_regenerate || SG(headers_sent) || !INI_INT("session.use_cookies")) {
		return;
	}
	zval fn, ret;
	/* session_get_cookie_params() + setcookie(), as the class does: PHP's
	 * own functions, so the cookie is exactly what PHP would send */
	ZVAL_STRING(&fn, "session_get_cookie_params");
	if (call_user_function(NULL, NULL, &fn, &ret, 0, NULL) != SUCCESS || Z_TYPE(ret) != IS_ARRAY) {
		zval_ptr_dtor(&fn);
		zval_ptr_dtor(&ret);
		return;
	}
	zval_ptr_dtor(&fn);
	zval opts;
	array_init(&opts);
	zval *lifetime = zend_hash_str_find(Z_ARRVAL(ret), "lifetime", sizeof("lifetime") - 1);
	zend_long lt = lifetime ? zval_get_long(lifetime) : 0;
	add_assoc_long(&opts, "expires", lt > 0 ? (zend_long)time(NULL) + lt : 0);
	const char *keys[] = {"path", "domain", "secure", "httponly", "samesite"};
	for (size_t i = 0; i < 5; i++) {
		zval *v = zend_hash_str_find(Z_ARRVAL(ret), keys[i], strlen(keys[i]));
		if (v && (i < 4 || zend_is_true(v))) {
			Z_TRY_ADDREF_P(v);
			add_assoc_zval(&opts, keys[i], v);
		}
	}
	zval_ptr_dtor(&ret);
	zval args[3];
	ZVAL_STRING(&fn, "setcookie");
	ZVAL_STRING(&args[0], S.session_name ? S.session_name : "PHPSESSID");
	ZVAL_STR_COPY(&args[1], new_id);
	ZVAL_COPY_VALUE(&args[2], &opts);
	call_user_function(NULL, NULL, &fn, &ret, 3, args);
	zval_ptr_dtor(&ret);
	zval_ptr_dtor(&fn);
	zval_ptr_dtor(&args[0]);
	zval_ptr_dtor(&args[1]);
	zval_ptr_dtor(&args[2]);
}

/* Codec::encodeSession() */
static zend_string *encode_session(HashTable *data, int smode)
{
	smart_str out = {0};
	if (smode == 2) {
		if (zend_hash_num_elements(data) > 0) {
			zval tmp;
			ZVAL_ARR(&tmp, data);
			php_serialize_data_t h;
			PHP_VAR_SERIALIZE_INIT(h);
			php_var_serialize(&out, &tmp, &h);
			PHP_VAR_SERIALIZE_DESTROY(h);
		}
	} else {
		zend_string *k;
		zend_ulong idx;
		zval *v;
		ZEND_HASH_FOREACH_KEY_VAL(data, idx, k, v) {
			zend_string *key = k ? zend_string_copy(k) : zend_long_to_str((zend_long)idx);
			bool skip = smode == 0 ? memchr(ZSTR_VAL(key), '|', ZSTR_LEN(key)) != NULL : ZSTR_LEN(key) > 127;
			if (!skip) {
				if (smode == 0) {
					smart_str_append(&out, key);
					smart_str_appendc(&out, '|');
				} else {
					smart_str_appendc(&out, (char)ZSTR_LEN(key));
					smart_str_append(&out, key);
				}
				php_serialize_data_t h;
				PHP_VAR_SERIALIZE_INIT(h);
				php_var_serialize(&out, v, &h);
				PHP_VAR_SERIALIZE_DESTROY(h);
			}
			zend_string_release(key);
		} ZEND_HASH_FOREACH_END();
	}
	if (out.s == NULL) {
		return ZSTR_EMPTY_ALLOC();
	}
	return smart_str_extract(&out);
}

/* read set entry: [version, canonical encoding] */
static void remember_quiet(zend_string *key, zend_long ver, zend_string *raw)
{
	if (raw == NULL || ver == 0) {
		zend_symtable_del(Z_ARRVAL(S.read_set), key);
		return;
	}
	zval v;
	if (!sd_decode_value(&v, raw)) {
		zend_clear_exception();
		return;
	}
	zend_string *canon = sd_encode_value(&v);
	zval_ptr_dtor(&v);
	if (canon == NULL) {
		zend_clear_exception();
		return;
	}
	zval e;
	array_init_size(&e, 2);
	add_next_index_long(&e, ver);
	add_next_index_str(&e, canon);
	zend_symtable_update(Z_ARRVAL(S.read_set), key, &e);
}

/* SessionHandler::absorbRead(): the reply of a session read into data. */
static bool absorb_read(zend_string *id, zval *reply, zval *data)
{
	zend_hash_clean(Z_ARRVAL(S.read_set));
	set_str(&S.server_id, id);
	array_init(data);
	if (Z_TYPE_P(reply) == IS_NULL) {
		if (S.fresh) {
			return true;
		}
		char sid[32];
		S.session_missing = true;
		warn(E_NOTICE, "sessiond: session %s no longer exists (destroyed or expired); starting empty, changes in this request will not be saved", short_id(id, sid, sizeof(sid)));
		return true;
	}
	zval *sidv, *fields;
	if (Z_TYPE_P(reply) != IS_ARRAY || zend_hash_num_elements(Z_ARRVAL_P(reply)) < 4
			|| (sidv = zend_hash_index_find(Z_ARRVAL_P(reply), 0)) == NULL
			|| (fields = zend_hash_index_find(Z_ARRVAL_P(reply), 3)) == NULL || Z_TYPE_P(fields) != IS_ARRAY) {
		snprintf(S.err, sizeof(S.err), "sessiond: protocol error: unexpected session read reply");
		zval_ptr_dtor(data);
		ZVAL_UNDEF(data);
		return false;
	}
	zend_string *sid = zval_get_string(sidv);
	set_str(&S.server_id, sid);
	if (!zend_string_equals(sid, id)) {
		follow_regenerate(sid);
	}
	zend_string_release(sid);
	zval_ptr_dtor(data);
	int rc = sd_absorb_fields(Z_ARRVAL_P(fields), Z_ARRVAL(S.cfg.split_keys), Z_ARRVAL(S.read_set), data);
	if (rc != ABSORB_OK) {
		ZVAL_UNDEF(data);
		if (rc == ABSORB_THREW) {
			zend_clear_exception();
		}
		snprintf(S.err, sizeof(S.err), "sessiond: cannot decode the session's stored fields");
		return false;
	}
	return true;
}

/* ------------------------------------------------------------------------
 * The read commands
 * --------------------------------------------------------------------- */

static void c_acquire(sd_cmd *c, zend_string *id)
{
	c_lit(c, "LOCK.ACQUIRE");
	c_str(c, id);
	c_lit(c, "WAIT");
	c_long(c, S.cfg.lock_wait_ms < 0 ? 0 : S.cfg.lock_wait_ms);
	if (S.cfg.lease_ms >= 0) {
		c_lit(c, "LEASE");
		c_long(c, S.cfg.lease_ms);
	}
	c_reqid(c);
}

/* readCommand(): what validate_sid() sends with its EXISTS, false when
 * read() does more than that. */
static bool read_command(zend_string *id, sd_cmd *c)
{
	if (S.active || S.regenerating || S.has_token || S.broken) {
		return false;
	}
	if (S.mode == MODE_READONLY) {
		c_lit(c, "SESSION.READ");
		c_str(c, id);
	} else if (S.mode == MODE_NONE) {
		c_lit(c, "SESSION.READ");
		c_str(c, id);
		c_lit(c, "TTL");
		c_long(c, ttl());
	} else {
		c_acquire(c, id);
	}
	return true;
}

static double wait_s(void)
{
	return S.mode == MODE_SESSION ? (double)(S.cfg.lock_wait_ms < 0 ? 0 : S.cfg.lock_wait_ms) / 1000.0 : 0.0;
}

static bool is_grant(const sd_reply *r)
{
	if (r->err || Z_TYPE(r->v) != IS_ARRAY || zend_hash_num_elements(Z_ARRVAL(r->v)) != 2) {
		return false;
	}
	zval *t = zend_hash_index_find(Z_ARRVAL(r->v), 0);
	return t && Z_TYPE_P(t) == IS_LONG && zend_hash_index_find(Z_ARRVAL(r->v), 1);
}

/* ------------------------------------------------------------------------
 * Regenerate
 * --------------------------------------------------------------------- */

/* SessionHandler::regenerate(): moves the session to a new id (server-made,
 * or `to`), the lock with it; NULL on failure (warned). */
static zend_string *regenerate(zend_string *to)
{
	zend_string *old = S.id;
	S.regenerating = false;
	if (old == NULL) {
		return NULL;
	}
	zend_long grace = S.cfg.grace >= 0 ? S.cfg.grace : (S.delete_old ? 0 : -1);
	S.delete_old = false;
	sd_cmd c = {{0}, 0};
	c_lit(&c, "SESSION.REGENERATE");
	c_str(&c, old);
	if (to) {
		c_lit(&c, "TO");
		c_str(&c, to);
	}
	if (grace >= 0) {
		c_lit(&c, "GRACE");
		c_long(&c, grace);
	}
	bool holding = S.has_token;
	zend_long token = S.token;
	zend_string *locked = S.locked_id ? zend_string_copy(S.locked_id) : NULL;
	bool release_after = holding && grace == 0;
	smart_str req = {0};
	c_end(&c, &req);
	int n = 1;
	if (holding && !release_after) {
		sd_cmd r2 = {{0}, 0};
		c_lit(&r2, "LOCK.RELEASE");
		c_str(&r2, locked);
		c_long(&r2, token);
		c_end(&r2, &req);
		n = 2;
	}
	sd_reply rs[2];
	int rc = pipeline(ZSTR_VAL(req.s), ZSTR_LEN(req.s), n, 0, false, false, rs);
	smart_str_free(&req);
	drop_token();
	zend_string *result = NULL;
	if (rc != SD_OK) {
		fail_msg(NULL, rc, "; session not regenerated");
		if (locked) {
			zend_string_release(locked);
		}
		conn_close();
		return NULL;
	}
	bool moved = rs[0].err == NULL;
	if (release_after) {
		sd_cmd r3 = {{0}, 0};
		c_lit(&r3, "LOCK.RELEASE");
		if (moved && Z_TYPE(rs[0].v) == IS_STRING) {
			c_str(&r3, Z_STR(rs[0].v));
		} else {
			c_str(&r3, locked);
		}
		c_long(&r3, token);
		sd_reply rr;
		if (command1(&r3, false, 0, &rr) == SD_OK) {
			reply_free(&rr);
		} else {
			conn_close();
		}
	}
	if (locked) {
		zend_string_release(locked);
	}
	if (!moved) {
		if (!err_is(&rs[0], "NOSESSION")) {
			fail_msg(&rs[0], SD_OK, "; session not regenerated");
			for (int i = 0; i < n; i++) {
				reply_free(&rs[i]);
			}
			return NULL;
		}
		if (to) {
			result = zend_string_copy(to);
		} else {
			sd_cmd nc = {{0}, 0};
			c_lit(&nc, "SESSION.NEW");
			c_lit(&nc, "TTL");
			c_long(&nc, ttl());
			c_lifetime(&nc);
			sd_reply nr;
			int nrc = command1(&nc, false, 0, &nr);
			if (nrc == SD_OK && nr.err == NULL && Z_TYPE(nr.v) == IS_STRING) {
				result = zend_string_copy(Z_STR(nr.v));
			} else {
				fail_msg(&nr, nrc, "; session not regenerated");
			}
			if (nrc == SD_OK) {
				reply_free(&nr);
			}
		}
	} else if (Z_TYPE(rs[0].v) == IS_STRING) {
		result = zend_string_copy(Z_STR(rs[0].v));
	}
	for (int i = 0; i < n; i++) {
		reply_free(&rs[i]);
	}
	if (result && !valid_id(result)) {
		zend_string_release(result);
		result = NULL;
		warn(E_WARNING, "sessiond: protocol error: unexpected SESSION.REGENERATE reply");
	}
	if (result) {
		add_created(result);
	}
	return result;
}

/* ------------------------------------------------------------------------
 * The save handler
 * --------------------------------------------------------------------- */

PS_OPEN_FUNC(sessiond)
{
	if (S.configured) {
		config_free(&S.cfg);
		S.configured = false;
	}
	char *msg = NULL;
	if (!config_parse(&S.cfg, save_path, &msg)) {
		config_free(&S.cfg);
		warn(E_WARNING, "%s", msg);
		efree(msg);
		S.broken = true;
		return FAILURE;
	}
	S.configured = true;
	if (S.session_name) {
		efree(S.session_name);
	}
	S.session_name = estrdup(session_name);
	S.mode = S.mode_override >= 0 ? S.mode_override : S.cfg.lock_mode;
	S.broken = false;
	set_str(&S.validated_id, NULL);
	clear_prefetched();

	/* a socket from an earlier request: reused only when it is for the
	 * same server and persistent, idle and open */
	if (S.fd >= 0 && !S.in_request) {
		char *key = make_conn_key();
		bool same = S.conn_key && strcmp(key, S.conn_key) == 0;
		free(key);
		if (!same || !S.cfg.persistent || !S.conn_persistent || !S.used || !conn_idle_ok()) {
			conn_close();
		} else {
			S.reused = true;
			S.need_reset = true; /* releases whatever the earlier request held */
		}
	}
	S.in_request = true;
	if (!conn_connect()) {
		warn(E_WARNING, "%s", S.err);
		S.broken = true;
		return FAILURE;
	}
	S.used = S.cfg.persistent;
	/* PHP calls write and close only for a module with data */
	*mod_data = &S;
	return SUCCESS;
}

PS_CLOSE_FUNC(sessiond)
{
	*mod_data = NULL;
	S.active = false;
	clear_prefetched();
	if (S.regenerating) {
		return SUCCESS; /* create_sid moves the session and releases the old lock */
	}
	if (S.has_token) {
		release_lock();
	}
	return SUCCESS;
}

PS_READ_FUNC(sessiond)
{
	char sid[32];
	S.active = false;
	S.session_missing = false;
	*val = NULL;
	if (S.broken || !S.configured) {
		warn(E_WARNING, "sessiond: no connection to the server; session not started");
		return FAILURE;
	}
	if (!valid_id(key)) {
		release_lock();
		warn(E_WARNING, "sessiond: session id contains characters outside [A-Za-z0-9,._:-] or is longer than 128; enable session.use_strict_mode so PHP replaces it");
		return FAILURE;
	}
	if (S.id && !zend_string_equals(key, S.id) && !is_created(key) && called_from("session_regenerate_id")) {
		zend_string *moved = regenerate(key);
		if (!moved) {
			return FAILURE;
		}
		zend_string_release(moved);
	}
	if (S.has_token && !zend_string_equals(S.locked_id, key)) {
		release_lock();
	}
	const char *handler = INI_STR("session.serialize_handler");
	int smode = handler ? sd_serialize_mode(handler) : -1;
	if (smode < 0) {
		warn(E_WARNING, "sessiond: session.serialize_handler '%s' is not supported (use php, php_serialize or php_binary)", handler ? handler : "");
		return FAILURE;
	}
	bool create = !strict() || is_created(key) || ((S.validated_id == NULL || !zend_string_equals(S.validated_id, key)) && !sent_by_client(key));
	S.fresh = create && strict();

	bool pre = S.has_pre && zend_string_equals(S.pre_id, key) && !create;
	bool try_again = pre && !S.pre_unknown && err_is(&S.pre_reply, "TRYAGAIN");
	if (try_again && S.mode != MODE_SESSION) {
		pre = false;
	}
	sd_reply got;
	ZVAL_UNDEF(&got.v);
	got.err = NULL;
	zval *reply = NULL;
	int rc = SD_OK;
	zval lock_reply;
	ZVAL_UNDEF(&lock_reply);

	if (pre && S.mode != MODE_SESSION) {
		if (S.pre_unknown || S.pre_reply.err) {
			fail_msg(&S.pre_reply, S.pre_unknown ? SD_UNKNOWN : SD_OK, "; session not started");
			clear_prefetched();
			return FAILURE;
		}
		reply = &S.pre_reply.v;
	} else if (S.mode != MODE_SESSION || (pre && S.has_token && S.locked_id && zend_string_equals(S.locked_id, key) && is_grant(&S.pre_reply)) || S.has_token) {
		if (S.mode == MODE_SESSION && pre && S.has_token && is_grant(&S.pre_reply)) {
			/* granted with validate_sid()'s SESSION.EXISTS */
			reply = zend_hash_index_find(Z_ARRVAL(S.pre_reply.v), 1);
		} else {
			sd_cmd c = {{0}, 0};
			c_lit(&c, "SESSION.READ");
			c_str(&c, key);
			if (S.mode == MODE_NONE && !S.has_token) {
				if (create) {
					c_lit(&c, "CREATE");
					c_lifetime(&c);
				}
				c_lit(&c, "TTL");
				c_long(&c, ttl());
			}
			rc = command1(&c, true, 0, &got);
			if (rc != SD_OK || got.err) {
				fail_msg(&got, rc, "; session not started");
				if (rc == SD_OK) {
					reply_free(&got);
				}
				clear_prefetched();
				return FAILURE;
			}
			reply = &got.v;
		}
	} else {
		/* session mode, no lock yet: LOCK.ACQUIRE … WAIT (returns the data) */
		zend_long wait = S.cfg.lock_wait_ms < 0 ? 0 : S.cfg.lock_wait_ms;
		smart_str req = {0};
		int n = 1;
		sd_reply answered;
		ZVAL_UNDEF(&answered.v);
		answered.err = NULL;
		bool have_answer = false, answer_unknown = false;
		if (create && S.cfg.lifetime > 0) {
			sd_cmd pc = {{0}, 0};
			c_lit(&pc, "SESSION.READ");
			c_str(&pc, key);
			c_lit(&pc, "CREATE");
			c_lit(&pc, "TTL");
			c_long(&pc, ttl());
			c_lifetime(&pc);
			c_lit(&pc, "KEYS");
			c_arg(&pc, "\0", 1);
			c_end(&pc, &req);
			n = 2;
		}
		if (pre) {
			/* the acquire validate_sid() sent did not get the lock: its
			 * answer, and the same REQID if it must be sent again */
			smart_str_append(&req, S.pre_cmd);
			if (!try_again) {
				have_answer = true;
				answer_unknown = S.pre_unknown;
				answered = S.pre_reply;
				ZVAL_UNDEF(&S.pre_reply.v);
				S.pre_reply.err = NULL;
			}
		} else {
			sd_cmd c = {{0}, 0};
			c_acquire(&c, key);
			if (create) {
				c_lit(&c, "CREATE");
			}
			c_end(&c, &req);
		}
		clear_prefetched();
		double until = now() + S.cfg.failover_timeout;
		sd_reply rs[2];
		for (int attempt = 1;; attempt++) {
			if (have_answer) {
				have_answer = false;
				if (answer_unknown) {
					rc = SD_UNKNOWN;
				} else {
					rc = SD_OK;
					rs[0] = answered;
					n = 1;
				}
			} else {
				rc = pipeline(ZSTR_VAL(req.s), ZSTR_LEN(req.s), n, (double)wait / 1000.0, false, false, rs);
			}
			sd_reply *last = rc == SD_OK ? &rs[n - 1] : NULL;
			sd_reply *firsterr = NULL;
			for (int i = 0; rc == SD_OK && i < n; i++) {
				if (rs[i].err && !firsterr) {
					firsterr = &rs[i];
				}
			}
			bool unknown = rc == SD_UNKNOWN || (firsterr && err_is(firsterr, "UNKNOWN"));
			if (unknown && now() < until) {
				if (rc == SD_OK) {
					for (int i = 0; i < n; i++) {
						reply_free(&rs[i]);
					}
				}
				/* same REQID again: adopts what the lost one got */
				usleep((useconds_t)(attempt >= 5 ? 500000 : (25000 << attempt)));
				continue;
			}
			if (unknown) {
				conn_close(); /* it may have been granted: never go on unlocked */
				warn(E_WARNING, "sessiond: the outcome of the lock request on session %s is unknown (%s); the lock is not held; session not started",
					short_id(key, sid, sizeof(sid)), rc == SD_UNKNOWN ? S.err : ZSTR_VAL(firsterr->err));
				if (rc == SD_OK) {
					for (int i = 0; i < n; i++) {
						reply_free(&rs[i]);
					}
				}
				smart_str_free(&req);
				return FAILURE;
			}
			if (rc != SD_OK) {
				fail_msg(NULL, rc, "; session not started");
				smart_str_free(&req);
				return FAILURE;
			}
			if (firsterr) {
				if (err_is(firsterr, "TIMEOUT") || err_is(firsterr, "DEADLOCK")) {
					warn(E_WARNING, "sessiond: could not acquire the lock on session %s within " ZEND_LONG_FMT " ms (%s); session not started",
						short_id(key, sid, sizeof(sid)), wait, ZSTR_VAL(firsterr->err));
				} else {
					fail_msg(firsterr, SD_OK, "; session not started");
				}
				for (int i = 0; i < n; i++) {
					reply_free(&rs[i]);
				}
				smart_str_free(&req);
				return FAILURE;
			}
			if (!is_grant(last)) {
				warn(E_WARNING, "sessiond: protocol error: unexpected LOCK.ACQUIRE reply; session not started");
				for (int i = 0; i < n; i++) {
					reply_free(&rs[i]);
				}
				smart_str_free(&req);
				conn_close();
				return FAILURE;
			}
			take_lock(Z_LVAL_P(zend_hash_index_find(Z_ARRVAL(last->v), 0)), key);
			ZVAL_COPY(&lock_reply, zend_hash_index_find(Z_ARRVAL(last->v), 1));
			for (int i = 0; i < n; i++) {
				reply_free(&rs[i]);
			}
			break;
		}
		smart_str_free(&req);
		reply = &lock_reply;
	}

	/* inside session_regenerate_id() PHP keeps its own $_SESSION: keep the
	 * read set that matches it */
	bool regen = called_from("session_regenerate_id");
	zval saved;
	ZVAL_UNDEF(&saved);
	if (regen) {
		ZVAL_ARR(&saved, zend_array_dup(Z_ARRVAL(S.read_set)));
	}
	zval data;
	bool ok = absorb_read(key, reply, &data);
	zval_ptr_dtor(&lock_reply);
	if (got.err || !Z_ISUNDEF(got.v)) {
		reply_free(&got);
	}
	clear_prefetched();
	if (regen) {
		zval_ptr_dtor(&S.read_set);
		ZVAL_COPY_VALUE(&S.read_set, &saved);
	}
	if (!ok) {
		warn(E_WARNING, "%s; session not started", S.err);
		release_lock();
		return FAILURE;
	}
	*val = encode_session(Z_ARRVAL(data), smode);
	zval_ptr_dtor(&data);
	set_str(&S.id, key);
	S.active = true;
	return SUCCESS;
}

/* The write's ops: SET key enc ver / DEL key ver (write_set: key => enc) */
typedef struct {
	zend_string *key;
	zend_string *enc; /* NULL: DEL */
	zend_long ver;
} sd_op;

static void absorb_commit(sd_op *ops, int n, sd_reply *r)
{
	zval *versions = NULL;
	if (r && Z_TYPE(r->v) == IS_ARRAY) {
		versions = zend_hash_index_find(Z_ARRVAL(r->v), 1);
		if (versions && Z_TYPE_P(versions) != IS_ARRAY) {
			versions = NULL;
		}
	}
	for (int i = 0; i < n; i++) {
		if (ops[i].enc == NULL) {
			zend_symtable_del(Z_ARRVAL(S.read_set), ops[i].key);
		} else {
			zval *v = versions ? zend_hash_index_find(Z_ARRVAL_P(versions), i) : NULL;
			zval e;
			array_init_size(&e, 2);
			add_next_index_long(&e, v ? zval_get_long(v) : 0);
			add_next_index_str(&e, zend_string_copy(ops[i].enc));
			zend_symtable_update(Z_ARRVAL(S.read_set), ops[i].key, &e);
		}
	}
}

static void ops_free(sd_op *ops, int n)
{
	for (int i = 0; i < n; i++) {
		zend_string_release(ops[i].key);
		if (ops[i].enc) {
			zend_string_release(ops[i].enc);
		}
	}
	efree(ops);
}

/* on_conflict / sessiond_set_conflict_handler(): 'mine', 'theirs' or -1 */
static int ask_conflict_handler(zval *keys, zval *details, zend_string *id)
{
	if (Z_ISUNDEF(S.conflict_handler)) {
		return -1;
	}
	zval args[3], ret;
	ZVAL_COPY(&args[0], keys);
	ZVAL_COPY(&args[1], details);
	ZVAL_STR_COPY(&args[2], id);
	int choice = -1;
	if (call_user_function(NULL, NULL, &S.conflict_handler, &ret, 3, args) == SUCCESS && !EG(exception)) {
		if (Z_TYPE(ret) == IS_STRING) {
			if (zend_string_equals_literal(Z_STR(ret), "mine")) {
				choice = 1;
			} else if (zend_string_equals_literal(Z_STR(ret), "theirs")) {
				choice = 0;
			}
		}
		zval_ptr_dtor(&ret);
	}
	if (EG(exception)) {
		zend_object *ex = EG(exception);
		GC_ADDREF(ex);
		zend_clear_exception();
		zval rv;
		zval *m = zend_read_property(ex->ce, ex, "message", sizeof("message") - 1, 1, &rv);
		zend_string *msg = zval_get_string(m);
		warn(E_WARNING, "sessiond: on_conflict callback threw %s: %s", ZSTR_VAL(ex->ce->name), ZSTR_VAL(msg));
		zend_string_release(msg);
		OBJ_RELEASE(ex);
	}
	for (int i = 0; i < 3; i++) {
		zval_ptr_dtor(&args[i]);
	}
	return choice;
}

static void decode_into(zval *rv, zend_string *raw)
{
	if (raw == NULL) {
		ZVAL_NULL(rv);
	} else if (!sd_decode_value(rv, raw)) {
		zend_clear_exception();
		ZVAL_STR_COPY(rv, raw);
	}
}

/* SessionHandler::commitConditional(): IFVER on every op; conflicts
 * reported and settled by the conflict policy. Takes ownership of ops. */
static bool commit_conditional(zend_string *id, sd_op *ops, int n)
{
	char sid[32];
	HashTable uncond;
	zend_hash_init(&uncond, 8, NULL, NULL, 0);
	zval *x;
	ZEND_HASH_FOREACH_VAL(Z_ARRVAL(S.cfg.lww_keys), x) {
		if (Z_TYPE_P(x) == IS_STRING) {
			zend_hash_add_empty_element(&uncond, Z_STR_P(x));
		}
	} ZEND_HASH_FOREACH_END();
	bool result = true;
	for (int attempt = 0; attempt < 8 && n > 0; attempt++) {
		sd_cmd c = {{0}, 0};
		c_lit(&c, "SESSION.COMMIT");
		c_str(&c, id);
		c_lit(&c, "TTL");
		c_long(&c, ttl());
		for (int i = 0; i < n; i++) {
			if (ops[i].enc) {
				c_lit(&c, "SET");
				c_str(&c, ops[i].key);
				c_str(&c, ops[i].enc);
			} else {
				c_lit(&c, "DEL");
				c_str(&c, ops[i].key);
			}
			if (!zend_hash_exists(&uncond, ops[i].key)) {
				c_lit(&c, "IFVER");
				c_long(&c, ops[i].ver);
			}
		}
		sd_reply r;
		int rc = command_once(&c, &r);
		if (rc == SD_OK && r.err == NULL) {
			absorb_commit(ops, n, &r);
			reply_free(&r);
			goto done;
		}
		if (rc == SD_OK && err_is(&r, "NOSESSION")) {
			reply_free(&r);
			warn(E_NOTICE, "sessiond: session %s was destroyed or expired meanwhile; %d changed key(s) not saved", short_id(id, sid, sizeof(sid)), n);
			goto done;
		}
		if (rc != SD_OK || !err_is(&r, "CONFLICT")) {
			if (rc == SD_UNKNOWN || (rc == SD_OK && err_is(&r, "UNKNOWN"))) {
				warn(E_WARNING, "sessiond: the outcome of saving session %s is unknown (%s): the changes may or may not have been saved",
					short_id(id, sid, sizeof(sid)), rc == SD_OK ? ZSTR_VAL(r.err) : S.err);
			} else {
				fail_msg(&r, rc, "; session data not saved");
			}
			if (rc == SD_OK) {
				reply_free(&r);
			}
			result = false;
			goto done;
		}
		reply_free(&r);
		/* which keys conflict: their current versions */
		sd_cmd rd = {{0}, 0};
		c_lit(&rd, "SESSION.READ");
		c_str(&rd, id);
		c_lit(&rd, "KEYS");
		HashTable seen;
		zend_hash_init(&seen, 8, NULL, NULL, 0);
		for (int i = 0; i < n; i++) {
			if (zend_hash_add_empty_element(&seen, ops[i].key)) {
				c_str(&rd, ops[i].key);
			}
		}
		zend_hash_destroy(&seen);
		sd_reply cur;
		rc = command1(&rd, true, 0, &cur);
		if (rc != SD_OK || cur.err) {
			fail_msg(&cur, rc, "; session data not saved");
			if (rc == SD_OK) {
				reply_free(&cur);
			}
			result = false;
			goto done;
		}
		if (Z_TYPE(cur.v) == IS_NULL) {
			reply_free(&cur);
			warn(E_NOTICE, "sessiond: session %s was destroyed or expired meanwhile; %d changed key(s) not saved", short_id(id, sid, sizeof(sid)), n);
			goto done;
		}
		/* key => [version, raw] now */
		HashTable nowv;
		zend_hash_init(&nowv, 8, NULL, ZVAL_PTR_DTOR, 0);
		zval *fields = Z_TYPE(cur.v) == IS_ARRAY ? zend_hash_index_find(Z_ARRVAL(cur.v), 3) : NULL;
		if (fields && Z_TYPE_P(fields) == IS_ARRAY) {
			uint32_t fn = zend_hash_num_elements(Z_ARRVAL_P(fields));
			for (uint32_t i = 0; i + 3 <= fn; i += 3) {
				zval *k = zend_hash_index_find(Z_ARRVAL_P(fields), i);
				zval *v = zend_hash_index_find(Z_ARRVAL_P(fields), i + 1);
				zval *raw = zend_hash_index_find(Z_ARRVAL_P(fields), i + 2);
				if (!k || !v || !raw) {
					continue;
				}
				zval e;
				array_init_size(&e, 2);
				add_next_index_long(&e, zval_get_long(v));
				Z_TRY_ADDREF_P(raw);
				add_next_index_zval(&e, raw);
				zend_string *ks = zval_get_string(k);
				zend_symtable_update(&nowv, ks, &e);
				zend_string_release(ks);
			}
		}
		reply_free(&cur);
		zval conflicts, details;
		array_init(&conflicts);
		array_init(&details);
		bool *drop_same = ecalloc((size_t)n, sizeof(bool));
		bool *is_conflict = ecalloc((size_t)n, sizeof(bool));
		int nconf = 0;
		for (int i = 0; i < n; i++) {
			if (zend_hash_exists(&uncond, ops[i].key)) {
				continue;
			}
			zval *e = zend_symtable_find(&nowv, ops[i].key);
			zend_long now_ver = e ? zval_get_long(zend_hash_index_find(Z_ARRVAL_P(e), 0)) : 0;
			zval *rawz = e ? zend_hash_index_find(Z_ARRVAL_P(e), 1) : NULL;
			zend_string *raw = rawz && Z_TYPE_P(rawz) == IS_STRING ? Z_STR_P(rawz) : NULL;
			if (now_ver == ops[i].ver) {
				continue;
			}
			bool same;
			if (ops[i].enc == NULL) {
				same = now_ver == 0;
			} else {
				same = false;
				if (raw) {
					zval dv;
					decode_into(&dv, raw);
					zend_string *canon = sd_encode_value(&dv);
					zval_ptr_dtor(&dv);
					if (canon) {
						same = zend_string_equals(canon, ops[i].enc);
						zend_string_release(canon);
					} else {
						zend_clear_exception();
					}
				}
			}
			if (same) {
				/* the other request already did exactly this */
				drop_same[i] = true;
				remember_quiet(ops[i].key, now_ver, raw);
				continue;
			}
			is_conflict[i] = true;
			nconf++;
			add_next_index_str(&conflicts, zend_string_copy(ops[i].key));
			zval d, mine, theirs;
			array_init(&d);
			if (ops[i].enc) {
				decode_into(&mine, ops[i].enc);
			} else {
				ZVAL_NULL(&mine);
			}
			add_assoc_zval(&d, "mine", &mine);
			add_assoc_bool(&d, "mine_deleted", ops[i].enc == NULL);
			decode_into(&theirs, raw);
			add_assoc_zval(&d, "theirs", &theirs);
			add_assoc_bool(&d, "theirs_deleted", now_ver == 0);
			add_assoc_long(&d, "base_version", ops[i].ver);
			add_assoc_long(&d, "their_version", now_ver);
			zend_symtable_update(Z_ARRVAL(details), ops[i].key, &d);
		}
		bool mine_policy = S.cfg.policy_mine;
		if (nconf > 0) {
			int choice = ask_conflict_handler(&conflicts, &details, id);
			if (choice >= 0) {
				mine_policy = choice == 1;
			}
			smart_str names = {0};
			zval *k;
			ZEND_HASH_FOREACH_VAL(Z_ARRVAL(conflicts), k) {
				if (names.s) {
					smart_str_appends(&names, ", ");
				}
				php_json_encode(&names, k, PHP_JSON_UNESCAPED_SLASHES | PHP_JSON_UNESCAPED_UNICODE);
			} ZEND_HASH_FOREACH_END();
			smart_str_0(&names);
			warn(E_WARNING, "sessiond: concurrent update conflict in session %s on key(s) %s: %s", short_id(id, sid, sizeof(sid)),
				ZSTR_VAL(names.s), mine_policy ? "overwrote the other request's value (conflict_policy=mine)" : "kept the other request's value (conflict_policy=theirs)");
			smart_str_free(&names);
		}
		/* the ops left: drop the same ones, and the conflicting ones under
		 * 'theirs'; under 'mine' they go unconditionally */
		int m = 0;
		for (int i = 0; i < n; i++) {
			bool drop = drop_same[i] || (is_conflict[i] && !mine_policy);
			if (is_conflict[i] && !mine_policy) {
				zval *e = zend_symtable_find(&nowv, ops[i].key);
				zval *rawz = e ? zend_hash_index_find(Z_ARRVAL_P(e), 1) : NULL;
				remember_quiet(ops[i].key, e ? zval_get_long(zend_hash_index_find(Z_ARRVAL_P(e), 0)) : 0,
					rawz && Z_TYPE_P(rawz) == IS_STRING ? Z_STR_P(rawz) : NULL);
			}
			if (is_conflict[i] && mine_policy) {
				zend_hash_add_empty_element(&uncond, ops[i].key);
			}
			if (drop) {
				zend_string_release(ops[i].key);
				if (ops[i].enc) {
					zend_string_release(ops[i].enc);
				}
			} else {
				ops[m++] = ops[i];
			}
		}
		n = m;
		efree(drop_same);
		efree(is_conflict);
		zval_ptr_dtor(&conflicts);
		zval_ptr_dtor(&details);
		zend_hash_destroy(&nowv);
	}
	if (n > 0) {
		warn(E_WARNING, "sessiond: giving up after repeated conflicts in session %s; %d key(s) not saved", short_id(id, sid, sizeof(sid)), n);
		result = false;
	}
done:
	ops_free(ops, n);
	zend_hash_destroy(&uncond);
	return result;
}

/* SessionHandler::writeLocked(). Takes ownership of ops. */
static bool write_locked(zend_string *id, sd_op *ops, int n, bool regen)
{
	char sid[32];
	if (n == 0) {
		efree(ops);
		if (regen) {
			return true;
		}
		smart_str req = {0};
		sd_cmd t = {{0}, 0};
		c_lit(&t, "SESSION.TOUCH");
		c_str(&t, id);
		c_lit(&t, "TTL");
		c_long(&t, ttl());
		c_end(&t, &req);
		sd_cmd rl = {{0}, 0};
		c_lit(&rl, "LOCK.RELEASE");
		c_str(&rl, S.locked_id);
		c_long(&rl, S.token);
		c_end(&rl, &req);
		sd_reply rs[2];
		int rc = pipeline(ZSTR_VAL(req.s), ZSTR_LEN(req.s), 2, 0, false, false, rs);
		smart_str_free(&req);
		drop_token();
		if (rc != SD_OK) {
			fail_msg(NULL, rc, "; session data not saved");
			conn_close();
			return false;
		}
		bool ok = true;
		for (int i = 0; i < 2; i++) {
			if (rs[i].err && ok) {
				fail_msg(&rs[i], SD_OK, "; session data not saved");
				ok = false;
			}
			reply_free(&rs[i]);
		}
		return ok;
	}
	sd_cmd c = {{0}, 0};
	c_lit(&c, "SESSION.COMMIT");
	c_str(&c, id);
	c_lit(&c, "TTL");
	c_long(&c, ttl());
	c_lit(&c, "FENCE");
	c_long(&c, S.token);
	if (!regen) {
		c_lit(&c, "UNLOCK");
	}
	for (int i = 0; i < n; i++) {
		if (ops[i].enc) {
			c_lit(&c, "SET");
			c_str(&c, ops[i].key);
			c_str(&c, ops[i].enc);
		} else {
			c_lit(&c, "DEL");
			c_str(&c, ops[i].key);
		}
	}
	sd_reply r;
	int rc = command_once(&c, &r);
	if (rc == SD_OK && err_is(&r, "FENCED")) {
		drop_token();
		warn(E_WARNING, "sessiond: the lock on session %s was lost before the write (%s); saving the changed keys only where no other request changed them",
			short_id(id, sid, sizeof(sid)), ZSTR_VAL(r.err));
		reply_free(&r);
		return commit_conditional(id, ops, n);
	}
	if (rc == SD_OK && err_is(&r, "NOSESSION")) {
		reply_free(&r);
		release_lock();
		warn(E_NOTICE, "sessiond: session %s was destroyed or expired while this request held it; %d changed key(s) not saved", short_id(id, sid, sizeof(sid)), n);
		ops_free(ops, n);
		return true;
	}
	if (rc != SD_OK || r.err) {
		if (rc == SD_UNKNOWN || (rc == SD_OK && err_is(&r, "UNKNOWN"))) {
			warn(E_WARNING, "sessiond: the outcome of saving session %s is unknown (%s): the changes may or may not have been saved",
				short_id(id, sid, sizeof(sid)), rc == SD_OK ? ZSTR_VAL(r.err) : S.err);
		} else {
			fail_msg(&r, rc, "; session data not saved");
		}
		if (rc == SD_OK) {
			reply_free(&r);
		}
		ops_free(ops, n);
		if (!regen) {
			release_lock();
		}
		return false;
	}
	if (!regen) {
		drop_token();
	}
	absorb_commit(ops, n, &r);
	reply_free(&r);
	ops_free(ops, n);
	return true;
}

/* $_SESSION, for the fallback when values refer to each other */
static HashTable *session_vars(void)
{
	zval *s = zend_hash_str_find(&EG(symbol_table), "_SESSION", sizeof("_SESSION") - 1);
	if (s == NULL) {
		return NULL;
	}
	ZVAL_DEREF(s);
	if (Z_TYPE_P(s) == IS_INDIRECT) {
		s = Z_INDIRECT_P(s);
		ZVAL_DEREF(s);
	}
	return Z_TYPE_P(s) == IS_ARRAY ? Z_ARRVAL_P(s) : NULL;
}

PS_WRITE_FUNC(sessiond)
{
	if (S.mode == MODE_READONLY) {
		return SUCCESS;
	}
	bool regen = called_from("session_regenerate_id");
	if (regen) {
		S.regenerating = true;
	}
	const char *handler = INI_STR("session.serialize_handler");
	int smode = handler ? sd_serialize_mode(handler) : -1;
	zval fields;
	array_init(&fields);
	int rc = smode < 0 ? SPLIT_FAILED : sd_split_session(val, smode, Z_ARRVAL(fields));
	if (rc == SPLIT_REFS) {
		/* values refer to each other: each top-level value of $_SESSION
		 * (what PHP just encoded) on its own, as splitByDecoding() does */
		zend_hash_clean(Z_ARRVAL(fields));
		HashTable *vars = session_vars();
		rc = vars ? SPLIT_OK : SPLIT_FAILED;
		zend_string *k;
		zend_ulong idx;
		zval *v;
		if (vars) {
			ZEND_HASH_FOREACH_KEY_VAL(vars, idx, k, v) {
				zend_string *enc = sd_encode_value(v);
				if (enc == NULL) {
					zend_clear_exception();
					rc = SPLIT_FAILED;
					break;
				}
				zval ze;
				ZVAL_STR(&ze, enc);
				if (k) {
					zend_symtable_update(Z_ARRVAL(fields), k, &ze);
				} else {
					zend_hash_index_update(Z_ARRVAL(fields), idx, &ze);
				}
			} ZEND_HASH_FOREACH_END();
		}
	}
	if (rc != SPLIT_OK) {
		zval_ptr_dtor(&fields);
		warn(E_WARNING, "sessiond: cannot decode the session data PHP handed to write(); nothing was written");
		if (!regen) {
			release_lock();
		}
		return FAILURE;
	}
	if (ZSTR_LEN(val) == 0) {
		HashTable *vars = session_vars();
		if (vars && zend_hash_num_elements(vars) > 0) {
			zval_ptr_dtor(&fields);
			warn(E_WARNING, "sessiond: PHP could not encode $_SESSION (a key containing \"|\" with serialize_handler=php?); nothing was written");
			if (!regen) {
				release_lock();
			}
			return FAILURE;
		}
	}
	/* splitNested(): a split key's array, one field per element */
	if (zend_hash_num_elements(Z_ARRVAL(S.cfg.split_keys)) > 0) {
		zend_string *k;
		zval *v;
		HashTable *ht = Z_ARRVAL(fields);
		zval reserved;
		array_init(&reserved);
		ZEND_HASH_FOREACH_STR_KEY(ht, k) {
			if (k && memchr(ZSTR_VAL(k), '.', ZSTR_LEN(k)) && sd_nested_of(Z_ARRVAL(S.cfg.split_keys), k)) {
				add_next_index_str(&reserved, zend_string_copy(k));
			}
		} ZEND_HASH_FOREACH_END();
		ZEND_HASH_FOREACH_VAL(Z_ARRVAL(reserved), v) {
			zend_symtable_del(ht, Z_STR_P(v));
			smart_str js = {0};
			php_json_encode(&js, v, PHP_JSON_UNESCAPED_SLASHES | PHP_JSON_UNESCAPED_UNICODE);
			smart_str_0(&js);
			warn(E_WARNING, "sessiond: top-level key %s is reserved (it names an element of a split key, see the split_keys option); not written", ZSTR_VAL(js.s));
			smart_str_free(&js);
		} ZEND_HASH_FOREACH_END();
		zval_ptr_dtor(&reserved);
		zval *sk;
		ZEND_HASH_FOREACH_VAL(Z_ARRVAL(S.cfg.split_keys), sk) {
			if (Z_TYPE_P(sk) != IS_STRING) {
				continue;
			}
			zval *enc = zend_symtable_find(ht, Z_STR_P(sk));
			if (enc == NULL || Z_TYPE_P(enc) != IS_STRING) {
				continue;
			}
			zval dv;
			decode_into(&dv, Z_STR_P(enc));
			if (Z_TYPE(dv) != IS_ARRAY) {
				zval_ptr_dtor(&dv);
				continue;
			}
			zend_symtable_del(ht, Z_STR_P(sk));
			zend_string *sub;
			zend_ulong si;
			zval *ev;
			ZEND_HASH_FOREACH_KEY_VAL(Z_ARRVAL(dv), si, sub, ev) {
				zend_string *subs = sub ? zend_string_copy(sub) : zend_long_to_str((zend_long)si);
				zend_string *fk = zend_string_concat3(Z_STRVAL_P(sk), Z_STRLEN_P(sk), ".", 1, ZSTR_VAL(subs), ZSTR_LEN(subs));
				zend_string *e = sd_encode_value(ev);
				if (e == NULL) {
					zend_clear_exception();
				} else {
					zval ze;
					ZVAL_STR(&ze, e);
					zend_symtable_update(ht, fk, &ze);
				}
				zend_string_release(fk);
				zend_string_release(subs);
			} ZEND_HASH_FOREACH_END();
			zval_ptr_dtor(&dv);
		} ZEND_HASH_FOREACH_END();
	}
	if (S.id == NULL || !zend_string_equals(key, S.id)) {
		zend_hash_clean(Z_ARRVAL(S.read_set));
	}
	/* delta(): changed or new keys, then removed ones */
	uint32_t cap = zend_hash_num_elements(Z_ARRVAL(fields)) + zend_hash_num_elements(Z_ARRVAL(S.read_set)) + 1;
	sd_op *ops = emalloc(sizeof(sd_op) * cap);
	int n = 0;
	{
		zend_string *k;
		zend_ulong idx;
		zval *enc;
		ZEND_HASH_FOREACH_KEY_VAL(Z_ARRVAL(fields), idx, k, enc) {
			zend_string *ks = k ? zend_string_copy(k) : zend_long_to_str((zend_long)idx);
			zval *seen = zend_symtable_find(Z_ARRVAL(S.read_set), ks);
			zval *sv = seen ? zend_hash_index_find(Z_ARRVAL_P(seen), 1) : NULL;
			if (sv == NULL || Z_TYPE_P(sv) != IS_STRING || !zend_string_equals(Z_STR_P(sv), Z_STR_P(enc))) {
				zval *ver = seen ? zend_hash_index_find(Z_ARRVAL_P(seen), 0) : NULL;
				ops[n].key = ks;
				ops[n].enc = zend_string_copy(Z_STR_P(enc));
				ops[n].ver = ver ? zval_get_long(ver) : 0;
				n++;
			} else {
				zend_string_release(ks);
			}
		} ZEND_HASH_FOREACH_END();
		zval *seen;
		ZEND_HASH_FOREACH_KEY_VAL(Z_ARRVAL(S.read_set), idx, k, seen) {
			zend_string *ks = k ? zend_string_copy(k) : zend_long_to_str((zend_long)idx);
			if (!zend_symtable_exists(Z_ARRVAL(fields), ks)) {
				ops[n].key = ks;
				ops[n].enc = NULL;
				ops[n].ver = zval_get_long(zend_hash_index_find(Z_ARRVAL_P(seen), 0));
				n++;
			} else {
				zend_string_release(ks);
			}
		} ZEND_HASH_FOREACH_END();
	}
	zval_ptr_dtor(&fields);

	if (S.mode == MODE_SESSION && S.has_token) {
		return write_locked(key, ops, n, regen) ? SUCCESS : FAILURE;
	}
	if (S.mode == MODE_SESSION) {
		ops_free(ops, n);
		warn(E_WARNING, "sessiond: write() without the session lock; nothing was written");
		return FAILURE;
	}
	if (n == 0) {
		efree(ops);
		sd_cmd t = {{0}, 0};
		c_lit(&t, "SESSION.TOUCH");
		c_str(&t, key);
		c_lit(&t, "TTL");
		c_long(&t, ttl());
		sd_reply r;
		int trc = command1(&t, false, 0, &r);
		bool ok = trc == SD_OK && r.err == NULL;
		if (!ok) {
			fail_msg(&r, trc, "; session data not saved");
		}
		if (trc == SD_OK) {
			reply_free(&r);
		}
		return ok ? SUCCESS : FAILURE;
	}
	return commit_conditional(key, ops, n) ? SUCCESS : FAILURE;
}

PS_DESTROY_FUNC(sessiond)
{
	if (called_from("session_regenerate_id")) {
		/* session_regenerate_id(true): create_sid moves the session, and
		 * the old id ends at once (GRACE 0) unless regenerate_grace says */
		S.regenerating = true;
		S.delete_old = true;
		return SUCCESS;
	}
	smart_str req = {0};
	sd_cmd c = {{0}, 0};
	c_lit(&c, "SESSION.DESTROY");
	c_str(&c, key);
	c_end(&c, &req);
	int n = 1;
	if (S.has_token) {
		sd_cmd rl = {{0}, 0};
		c_lit(&rl, "LOCK.RELEASE");
		c_str(&rl, S.locked_id);
		c_long(&rl, S.token);
		c_end(&rl, &req);
		n = 2;
	}
	sd_reply rs[2];
	int rc = pipeline(ZSTR_VAL(req.s), ZSTR_LEN(req.s), n, 0, false, false, rs);
	smart_str_free(&req);
	drop_token();
	zend_hash_clean(Z_ARRVAL(S.read_set));
	if (rc != SD_OK) {
		fail_msg(NULL, rc, "; session not destroyed");
		return FAILURE;
	}
	bool ok = rs[0].err == NULL;
	if (!ok) {
		fail_msg(&rs[0], SD_OK, "; session not destroyed");
	}
	for (int i = 0; i < n; i++) {
		reply_free(&rs[i]);
	}
	return ok ? SUCCESS : FAILURE;
}

PS_GC_FUNC(sessiond)
{
	*nrdels = 0;
	return 0; /* the server expires sessions itself */
}

PS_CREATE_SID_FUNC(sessiond)
{
	if (S.configured && !S.broken) {
		if (S.regenerating || (called_from("session_regenerate_id") && S.id != NULL)) {
			zend_string *id = regenerate(NULL);
			if (id) {
				return id;
			}
			S.broken = true;
		} else {
			sd_cmd c = {{0}, 0};
			c_lit(&c, "SESSION.NEW");
			c_lit(&c, "TTL");
			c_long(&c, ttl());
			c_lifetime(&c);
			sd_reply r;
			int rc = command1(&c, false, 0, &r);
			if (rc == SD_OK && r.err == NULL && Z_TYPE(r.v) == IS_STRING && valid_id(Z_STR(r.v))) {
				zend_string *id = zend_string_copy(Z_STR(r.v));
				reply_free(&r);
				add_created(id);
				return id;
			}
			fail_msg(&r, rc, "");
			if (rc == SD_OK) {
				reply_free(&r);
			}
			S.broken = true;
		}
	}
	/* PHP needs an id: read() fails on the broken connection, so
	 * session_start() returns false */
	return php_session_create_id(NULL);
}

PS_VALIDATE_SID_FUNC(sessiond)
{
	set_str(&S.validated_id, key);
	if (!valid_id(key) || !S.configured) {
		return FAILURE;
	}
	if (is_created(key) && called_from("session_regenerate_id")) {
		/* session_regenerate_id() asks whether the id create_sid() just
		 * made collides: created by this request, it does not. (Anywhere
		 * else, a second session_start() of this request for one, the id
		 * is validated like any other: it exists.) */
		return FAILURE;
	}
	clear_prefetched();
	sd_cmd next = {{0}, 0};
	smart_str req = {0};
	sd_cmd ex = {{0}, 0};
	c_lit(&ex, "SESSION.EXISTS");
	c_str(&ex, key);
	c_end(&ex, &req);
	if (!read_command(key, &next)) {
		smart_str_free(&next.body);
		sd_reply r;
		int rc = pipeline(ZSTR_VAL(req.s), ZSTR_LEN(req.s), 1, 0, false, true, &r);
		smart_str_free(&req);
		if (rc != SD_OK || r.err) {
			fail_msg(&r, rc, "");
			if (rc == SD_OK) {
				reply_free(&r);
			}
			S.broken = true;
			return FAILURE;
		}
		bool exists = Z_TYPE(r.v) == IS_LONG && Z_LVAL(r.v) == 1;
		reply_free(&r);
		return exists ? SUCCESS : FAILURE;
	}
	smart_str nextreq = {0};
	c_end(&next, &nextreq);
	smart_str_append(&req, nextreq.s);
	sd_reply rs[2];
	int rc = pipeline(ZSTR_VAL(req.s), ZSTR_LEN(req.s), 2, wait_s(), true, S.mode != MODE_SESSION, rs);
	smart_str_free(&req);
	if (rc == SD_UNKNOWN) {
		/* lost after the acquire went out: ask EXISTS alone; read() sends
		 * the same acquire, whose REQID adopts what the lost one got */
		sd_cmd e2 = {{0}, 0};
		c_lit(&e2, "SESSION.EXISTS");
		c_str(&e2, key);
		sd_reply r;
		int rc2 = command1(&e2, true, 0, &r);
		if (rc2 != SD_OK || r.err) {
			fail_msg(&r, rc2, "");
			if (rc2 == SD_OK) {
				reply_free(&r);
			}
			smart_str_free(&nextreq);
			S.broken = true;
			return FAILURE;
		}
		bool exists = Z_TYPE(r.v) == IS_LONG && Z_LVAL(r.v) == 1;
		reply_free(&r);
		if (exists && S.mode == MODE_SESSION) {
			S.has_pre = true;
			S.pre_id = zend_string_copy(key);
			S.pre_cmd = smart_str_extract(&nextreq);
			ZVAL_UNDEF(&S.pre_reply.v);
			S.pre_reply.err = NULL;
			S.pre_unknown = true;
		} else {
			smart_str_free(&nextreq);
		}
		return exists ? SUCCESS : FAILURE;
	}
	if (rc != SD_OK || rs[0].err) {
		fail_msg(&rs[0], rc, "");
		if (rc == SD_OK) {
			reply_free(&rs[0]);
			reply_free(&rs[1]);
		}
		smart_str_free(&nextreq);
		S.broken = true;
		return FAILURE;
	}
	bool granted = S.mode == MODE_SESSION && is_grant(&rs[1]);
	if (granted) {
		take_lock(Z_LVAL_P(zend_hash_index_find(Z_ARRVAL(rs[1].v), 0)), key);
	}
	bool exists = Z_TYPE(rs[0].v) == IS_LONG && Z_LVAL(rs[0].v) == 1;
	reply_free(&rs[0]);
	if (exists) {
		S.has_pre = true;
		S.pre_id = zend_string_copy(key);
		S.pre_cmd = smart_str_extract(&nextreq);
		S.pre_reply = rs[1];
		S.pre_unknown = false;
		return SUCCESS;
	}
	reply_free(&rs[1]);
	smart_str_free(&nextreq);
	if (granted) {
		release_lock(); /* created between the two commands: not ours */
	}
	return FAILURE;
}

PS_UPDATE_TIMESTAMP_FUNC(sessiond)
{
	if (S.mode == MODE_READONLY) {
		return SUCCESS;
	}
	smart_str req = {0};
	sd_cmd t = {{0}, 0};
	c_lit(&t, "SESSION.TOUCH");
	c_str(&t, key);
	c_lit(&t, "TTL");
	c_long(&t, ttl());
	c_end(&t, &req);
	int n = 1;
	if (S.mode == MODE_SESSION && S.has_token) {
		sd_cmd rl = {{0}, 0};
		c_lit(&rl, "LOCK.RELEASE");
		c_str(&rl, S.locked_id);
		c_long(&rl, S.token);
		c_end(&rl, &req);
		n = 2;
	}
	sd_reply rs[2];
	int rc = pipeline(ZSTR_VAL(req.s), ZSTR_LEN(req.s), n, 0, false, false, rs);
	smart_str_free(&req);
	if (n == 2) {
		drop_token();
	}
	if (rc != SD_OK) {
		fail_msg(NULL, rc, "");
		conn_close();
		return FAILURE;
	}
	bool ok = true;
	for (int i = 0; i < n; i++) {
		if (rs[i].err && ok) {
			fail_msg(&rs[i], SD_OK, "");
			ok = false;
		}
		reply_free(&rs[i]);
	}
	if (!ok) {
		release_lock();
	}
	return ok ? SUCCESS : FAILURE;
}

static const ps_module ps_mod_sessiond = {
	PS_MOD_UPDATE_TIMESTAMP(sessiond)
};

/* ------------------------------------------------------------------------
 * Request lifecycle and PHP functions
 * --------------------------------------------------------------------- */

static void request_state_free(void)
{
	clear_prefetched();
	set_str(&S.id, NULL);
	set_str(&S.server_id, NULL);
	set_str(&S.locked_id, NULL);
	set_str(&S.validated_id, NULL);
	zval_ptr_dtor(&S.read_set);
	zval_ptr_dtor(&S.created_ids);
	zval_ptr_dtor(&S.conflict_handler);
	ZVAL_UNDEF(&S.read_set);
	ZVAL_UNDEF(&S.created_ids);
	ZVAL_UNDEF(&S.conflict_handler);
	if (S.configured) {
		config_free(&S.cfg);
		S.configured = false;
	}
	if (S.session_name) {
		efree(S.session_name);
		S.session_name = NULL;
	}
}

void sd_handler_rinit(void)
{
	S.in_request = false;
	S.reused = false;
	S.mode_override = -1;
	S.has_token = false;
	S.regenerating = S.delete_old = S.session_missing = S.fresh = S.active = S.broken = false;
	S.has_pre = false;
	S.pre_unknown = false;
	S.id = S.server_id = S.locked_id = S.validated_id = S.pre_id = S.pre_cmd = NULL;
	ZVAL_UNDEF(&S.pre_reply.v);
	S.pre_reply.err = NULL;
	array_init(&S.read_set);
	array_init(&S.created_ids);
	ZVAL_UNDEF(&S.conflict_handler);
	S.configured = false;
	S.session_name = NULL;
}

/* This module's RSHUTDOWN runs before the session module's (it depends on
 * it), while objects are still alive: a session still open is written and
 * closed here, as session_set_save_handler()'s shutdown function does for
 * a handler class, so that the conflict handler and the values' __sleep()
 * run in a working engine; then the request's PHP values go. */
void sd_handler_rshutdown(void)
{
	if (S.active && S.configured) {
		zval fn, ret;
		ZVAL_STRING(&fn, "session_write_close");
		zend_try {
			call_user_function(NULL, NULL, &fn, &ret, 0, NULL);
			zval_ptr_dtor(&ret);
		} zend_end_try();
		zval_ptr_dtor(&fn);
		if (EG(exception)) {
			zend_clear_exception();
		}
	}
	bool holding = S.has_token;
	request_state_free();
	S.has_token = holding;
}

/* After every module's RSHUTDOWN: whatever this request still holds goes.
 * A per-request socket is closed (the server releases its locks); a
 * persistent one that still holds a lock gets RESET now (and RESET again
 * at its first use in the next request). */
void sd_handler_post_deactivate(void)
{
	if (S.fd >= 0) {
		if (!S.conn_persistent) {
			conn_close();
		} else if (S.has_token) {
			double deadline = now() + 1.0;
			sd_reply r;
			S.need_reset = false;
			if (write_all(reset_cmd, sizeof(reset_cmd) - 1, deadline) && read_reply(&r, deadline)) {
				reply_free(&r);
			} else {
				conn_close();
			}
		}
	}
	S.has_token = false;
	S.in_request = false;
}

zend_result sd_handler_minit(void)
{
	S.fd = -1;
	S.mode_override = -1;
	return php_session_register_module(&ps_mod_sessiond);
}

void sd_handler_mshutdown(void)
{
	conn_close();
	free(S.buf);
	S.buf = NULL;
	S.cap = 0;
	free(S.conn_key);
	S.conn_key = NULL;
}

static bool session_active(void)
{
	zval fn, ret;
	ZVAL_STRING(&fn, "session_status");
	bool active = call_user_function(NULL, NULL, &fn, &ret, 0, NULL) == SUCCESS && Z_TYPE(ret) == IS_LONG && Z_LVAL(ret) == php_session_active;
	zval_ptr_dtor(&fn);
	zval_ptr_dtor(&ret);
	return active;
}

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_sessiond_set_mode, 0, 1, IS_VOID, 0)
	ZEND_ARG_TYPE_INFO(0, mode, IS_STRING, 1)
ZEND_END_ARG_INFO()

/* sessiond_set_mode(?string $mode): void — SessionHandler::setMode() for
 * the native handler: the lock mode of the sessions this request starts
 * from now on; null goes back to the lock_mode option. */
PHP_FUNCTION(sessiond_set_mode)
{
	zend_string *mode = NULL;
	ZEND_PARSE_PARAMETERS_START(1, 1)
		Z_PARAM_STR_OR_NULL(mode)
	ZEND_PARSE_PARAMETERS_END();
	int m = -1;
	if (mode) {
		m = mode_of(ZSTR_VAL(mode), ZSTR_LEN(mode));
		if (m < 0) {
			zend_argument_value_error(1, "must be \"session\", \"readonly\" or \"none\"");
			RETURN_THROWS();
		}
	}
	if (session_active()) {
		zend_throw_error(NULL, "sessiond: sessiond_set_mode() must be called before session_start()");
		RETURN_THROWS();
	}
	S.mode_override = m;
}

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_sessiond_native_info, 0, 0, IS_ARRAY, 0)
ZEND_END_ARG_INFO()

/* sessiond_native_info(): array — the native handler's state in this
 * request (reused, mode, token, locked_id), for tests and diagnostics. */
PHP_FUNCTION(sessiond_native_info)
{
	ZEND_PARSE_PARAMETERS_NONE();
	array_init(return_value);
	add_assoc_bool(return_value, "reused", S.reused);
	int m = S.active || S.configured ? S.mode : (S.mode_override >= 0 ? S.mode_override : MODE_SESSION);
	add_assoc_string(return_value, "mode", mode_names[m]);
	if (S.has_token) {
		add_assoc_long(return_value, "token", S.token);
		add_assoc_str(return_value, "locked_id", zend_string_copy(S.locked_id));
	} else {
		add_assoc_null(return_value, "token");
		add_assoc_null(return_value, "locked_id");
	}
}

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_sessiond_set_conflict_handler, 0, 1, IS_VOID, 0)
	ZEND_ARG_TYPE_INFO(0, handler, IS_CALLABLE, 1)
ZEND_END_ARG_INFO()

/* sessiond_set_conflict_handler(?callable $f): void — the on_conflict
 * option for the native handler (this request). */
PHP_FUNCTION(sessiond_set_conflict_handler)
{
	zval *f = NULL;
	ZEND_PARSE_PARAMETERS_START(1, 1)
		Z_PARAM_ZVAL_OR_NULL(f)
	ZEND_PARSE_PARAMETERS_END();
	if (f && !zend_is_callable(f, 0, NULL)) {
		zend_argument_type_error(1, "must be a valid callback or null");
		RETURN_THROWS();
	}
	zval_ptr_dtor(&S.conflict_handler);
	ZVAL_UNDEF(&S.conflict_handler);
	if (f) {
		ZVAL_COPY(&S.conflict_handler, f);
	}
}

const zend_function_entry sd_handler_functions[] = {
	ZEND_FE(sessiond_set_mode, arginfo_sessiond_set_mode)
	ZEND_FE(sessiond_native_info, arginfo_sessiond_native_info)
	ZEND_FE(sessiond_set_conflict_handler, arginfo_sessiond_set_conflict_handler)
	ZEND_FE_END
};

#else /* ZTS: the native handler is not built; the helpers still are */

const zend_function_entry sd_handler_functions[] = {ZEND_FE_END};
zend_result sd_handler_minit(void)
{
	return SUCCESS;
}
void sd_handler_rinit(void) {}
void sd_handler_rshutdown(void) {}
void sd_handler_post_deactivate(void) {}
void sd_handler_mshutdown(void) {}

#endif
