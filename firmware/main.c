/* flashbox: the one program of the appliance. Dispatches `flashbox <command> ...` to the
 * command's entry point; `flashbox help` lists them. */
#include "firmware/commands.h"

#include <stdio.h>
#include <string.h>

struct command {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *summary;
};

static const struct command commands[] = {
    { "logits", cmd_logits, "write or print the logits of a token sequence" },

    { "mkmodel", tool_mkmodel_main, "write a seeded random-weight deepseek4 GGUF (test and default models)" },
    { "bench", cmd_bench, "measure prefill/decode speed, per-kernel GPU time and bandwidth" },
    { "plan", cmd_plan, "print the memory the engine would allocate for a context and the largest that fits" },
    { "board", cmd_board, "print the GPUs found (DRM + Vulkan), their limits and the one flashbox picks" },
    { "inspect", cmd_inspect, "print a model file's metadata, tensors and hyper-parameters" },
    { "serve", cmd_serve, "run the API daemon (Unix socket, OpenAI-compatible HTTP)" },
    { "convert", tool_convert_main, "convert the official safetensors checkpoint (FP8 + FP4) to a deepseek4 GGUF" },
    { "quantize", tool_quantize_main, "rewrite a model's matrices into K-quants / IQ4 / Q8_0 by a recipe; --report gives the KL cost" },
    { "imatrix", tool_imatrix_main, "compute an importance matrix from the model's activations over a token file (for quantize --imatrix)" },
    { "tokenize", cmd_tokenize, "print the token ids of the text on stdin" },
    { "detokenize", cmd_detokenize, "print the text of comma-separated token ids on stdin" },
    { "run", cmd_run, "generate from a prompt, or chat interactively, streaming the answer" },
    { "eval", cmd_eval, "score a model on a site's evaluation set (JSON lines); --record fills expected answers" },
    { "update", cmd_update, "verify, install, roll back signed update bundles; show slot status" },
    { "bundle", cmd_bundle, "create a signed update bundle (bundle create --help)" },
    { "keygen", tool_keygen_main, "write an Ed25519 key pair for signing bundles" },

};

static void usage(FILE *out)
{
    fprintf(out, "usage: flashbox <command> [options]   (flashbox <command> --help for details)\n\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(out, "  %-12s %s\n", commands[i].name, commands[i].summary);
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "help") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(stdout);
        return argc < 2 ? 2 : 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "flashbox: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
