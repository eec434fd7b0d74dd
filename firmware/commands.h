/* Every `flashbox <command>` entry point, one per line in firmware/main.c's table.
 * Each takes the arguments after the command name (argv[0] is the command) and returns the
 * process exit status. */
#ifndef FLASHBOX_FIRMWARE_COMMANDS_H
#define FLASHBOX_FIRMWARE_COMMANDS_H

#include <stddef.h>

int cmd_logits(int argc, char **argv);   /* firmware/cmd_logits.c */
int cmd_inspect(int argc, char **argv);  /* firmware/cmd_inspect.c */
/* Prints label and a provenance record (JSON text, indented; firmware/cmd_inspect.c). */
void print_provenance(const char *label, const char *text, size_t len);
int cmd_bench(int argc, char **argv);    /* firmware/cmd_bench.c */
int cmd_board(int argc, char **argv);    /* firmware/cmd_board.c */
int cmd_plan(int argc, char **argv);     /* firmware/cmd_plan.c */
int cmd_serve(int argc, char **argv);    /* firmware/serve.c */
int cmd_tokenize(int argc, char **argv);   /* firmware/cmd_tokenize.c */
int cmd_detokenize(int argc, char **argv); /* firmware/cmd_tokenize.c */
int cmd_run(int argc, char **argv);        /* firmware/cmd_run.c */
int cmd_eval(int argc, char **argv);       /* firmware/cmd_eval.c */
int tool_mkmodel_main(int argc, char **argv); /* tools/mkmodel_cli.c */
int tool_convert_main(int argc, char **argv); /* tools/convert.c */
int tool_quantize_main(int argc, char **argv); /* tools/quantize_cli.c */
int tool_imatrix_main(int argc, char **argv); /* tools/imatrix_cli.c */
int cmd_update(int argc, char **argv);   /* firmware/cmd_update.c */
int cmd_bundle(int argc, char **argv);   /* firmware/cmd_update.c -> tools/bundle_cli.c */
int tool_keygen_main(int argc, char **argv); /* tools/bundle_cli.c */

#endif
