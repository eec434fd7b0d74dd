/* The tool-calling parts of a chat request (OpenAI's `tools`, `tool_choice`, assistant
 * `tool_calls` sent back in history) -> struct gen_request, and JSON written the way the
 * official DeepSeek-V4 encoder writes it (Python's json.dumps: ", " and ": " separators,
 * UTF-8 kept, shortest round-trip floats), so a tool schema or a call's argument renders
 * byte for byte as the model was trained on. Used by request_parse.c and textgen.c. */
#ifndef FLASHBOX_FIRMWARE_REQUEST_TOOLS_H
#define FLASHBOX_FIRMWARE_REQUEST_TOOLS_H

#include "firmware/request_parse.h"

#include <jansson.h>

/* Each returns 0, or -1 with a message naming the field. */
int req_parse_tools(json_t *v, struct gen_request *r, char *err, size_t err_len);
int req_parse_tool_choice(json_t *v, struct gen_request *r, char *err, size_t err_len);
/* messages[i].tool_calls */
int req_parse_tool_calls(json_t *v, size_t i, struct req_message *m, char *err, size_t err_len);
/* After the whole body: a named tool_choice names an offered tool; a required or named
 * choice compiles the call grammar into r->calls (a schema outside the supported subset, or
 * response_format as well, is refused by name). */
int req_check_tools(struct gen_request *r, char *err, size_t err_len);
void req_tools_free(struct gen_request *r);
void req_message_tools_free(struct req_message *m);

/* v as Python's json.dumps(v, ensure_ascii=False) writes it; malloc'd, NULL when out of
 * memory. *len gets its length (it may hold U+0000 escaped, never a raw NUL). */
char *req_json_python(const json_t *v, size_t *len);

#endif
