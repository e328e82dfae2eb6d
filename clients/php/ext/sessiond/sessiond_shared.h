/*
 * What sessiond.c (the codec and RESP helpers) and handler.c (the native
 * save handler) share.
 */
#ifndef SESSIOND_SHARED_H
#define SESSIOND_SHARED_H

#include "php.h"

#define PHP_SESSIOND_VERSION "0.2.0"

/* INCOMPLETE: the reply is not all in the buffer yet (the caller reads
 * more and asks again); DECLINED: something the PHP parser must judge (a
 * protocol error, an integer of more than 18 digits, deep nesting). */
typedef enum { PARSED = 1, DECLINED = 0, THREW = -1, INCOMPLETE = 2 } parse_rc;

/* One RESP reply of buf[*pos..len) (error replies as ServerException
 * objects when that class can be loaded, else DECLINED). */
parse_rc sd_resp_parse(const char *buf, size_t len, size_t *pos, zval *rv, int depth);

/* Codec::splitSession() of data in serialize mode 0 (php), 1
 * (php_binary) or 2 (php_serialize), into out (key => field encoding). */
enum { SPLIT_OK = 1, SPLIT_FAILED = 0, SPLIT_REFS = 2 };
int sd_split_session(zend_string *data, int mode, HashTable *out);
/* the mode of a session.serialize_handler name, -1 when unsupported */
int sd_serialize_mode(const char *handler);

/* Codec::decodeValue() of a non-null string (false: an exception is
 * pending), Codec::encodeValue() (NULL: an exception is pending). */
bool sd_decode_value(zval *rv, zend_string *raw);
zend_string *sd_encode_value(zval *v);

/* The split key (a list of strings) $field is an element of
 * ("<key>.<element>"), or NULL. */
zend_string *sd_nested_of(HashTable *split, zend_string *field);

/* The loop of SessionHandler::absorbRead(): data (an array on
 * ABSORB_OK) and readset (key => [version, canonical encoding]). */
enum { ABSORB_OK = 1, ABSORB_DECLINED = 0, ABSORB_THREW = -1 };
int sd_absorb_fields(HashTable *fields, HashTable *split, HashTable *readset, zval *return_value);

/* handler.c: the native save handler (session.save_handler = sessiond) */
extern const zend_function_entry sd_handler_functions[];
zend_result sd_handler_minit(void);
void sd_handler_rinit(void);
void sd_handler_rshutdown(void);
void sd_handler_post_deactivate(void);
void sd_handler_mshutdown(void);

#endif
