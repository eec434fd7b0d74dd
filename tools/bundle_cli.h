/* `flashbox keygen` and `flashbox bundle create`: host-side signing tools on the update
 * public API. The bundle tool records the self-test tokens by running the model through
 * a greedy function the caller supplies (firmware wires it to the engine). */
#ifndef FLASHBOX_TOOLS_BUNDLE_CLI_H
#define FLASHBOX_TOOLS_BUNDLE_CLI_H

#include "update/update.h"

int tool_keygen_main(int argc, char **argv);
int tool_bundle_run(int argc, char **argv, update_greedy_fn greedy, void *greedy_user);

#endif
