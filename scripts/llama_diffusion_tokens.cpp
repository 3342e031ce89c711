// llama.cpp's diffusion decoding on given token ids, printing the ids it generates: the reference
// for tests/data/gguf-parity/*/llama-generations.json (scripts/llama_generations.sh builds and runs
// it). The diffusion CLI cannot serve here: it wraps every prompt in a chat template (ChatML when
// the model has none) and prints detokenized text; this calls the same `diffusion_generate` that the
// CLI calls, on the ids as given, with the CLI's sampler settings passed explicitly.
//
//   llama_diffusion_tokens MODEL.gguf CANVAS STEPS BLOCK_LENGTH EPS TOP_K (ID... | --text TEXT)
//
// BLOCK_LENGTH > 0 selects llama.cpp's block schedule (LLaDA), else EPS its timestep one (Dream).
// TEXT is tokenized by the file's own vocabulary as the CLI does (special tokens added and parsed).
// Prints two lines: the prompt's ids, then the CANVAS - len(prompt) ids after it.
#include "common.h"
#include "diffusion.h"
#include "llama.h"

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

int main(int argc, char ** argv) {
    if (argc < 8) {
        fprintf(stderr, "usage: %s MODEL CANVAS STEPS BLOCK_LENGTH EPS TOP_K ID...\n", argv[0]);
        return 2;
    }
    const int   canvas = atoi(argv[2]);
    const int   steps  = atoi(argv[3]);
    const int   block  = atoi(argv[4]);
    const float eps    = (float) atof(argv[5]);
    const int   top_k  = atoi(argv[6]);
    const bool text = std::string(argv[7]) == "--text";

    llama_backend_init();
    llama_log_set([](ggml_log_level, const char *, void *) {}, nullptr);
    llama_model * model = llama_model_load_from_file(argv[1], llama_model_default_params());
    if (!model) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = canvas;
    cp.n_batch = canvas;
    cp.n_ubatch = canvas;
    cp.n_threads = 2;
    cp.n_threads_batch = 2;
    llama_context * ctx = llama_init_from_model(model, cp);
    std::vector<llama_token> ids;
    if (text && argc > 8) {
        ids = common_tokenize(llama_model_get_vocab(model), argv[8], true, true);
    }
    for (int i = 7; !text && i < argc; i++) {
        ids.push_back(atoi(argv[i]));
    }
    for (size_t i = 0; i < ids.size(); i++) {
        printf(i + 1 < ids.size() ? "%d " : "%d\n", ids[i]);
    }

    diffusion_params p;
    p.steps = steps;
    p.temperature = 0.0f;  // the CLI's --temp 0: no temperature sampler in the chain
    p.top_k = top_k;
    p.top_p = 0.95f;       // the CLI's default
    p.mask_token_id = llama_vocab_mask(llama_model_get_vocab(model));
    p.max_length = canvas;
    p.algorithm = DIFFUSION_ALGORITHM_CONFIDENCE_BASED;
    char shift[8];
    p.shift_logits = llama_model_meta_val_str(model, "diffusion.shift_logits", shift, sizeof(shift)) < 0 ||
                     shift[0] == 't';
    if (block > 0) {
        p.schedule = DIFFUSION_TRANSFER_SCHEDULE_BLOCK_BASED;
        p.block_length = block;
    } else {
        p.schedule = DIFFUSION_TRANSFER_SCHEDULE_TIMESTEP_BASED;
        p.eps = eps;
    }
    std::vector<llama_token> out(canvas);
    int32_t n_generated = 0;
    diffusion_generate(ctx, ids.data(), out.data(), (int32_t) ids.size(), p, n_generated);
    for (int i = (int) ids.size(); i < canvas; i++) {
        printf(i + 1 < canvas ? "%d " : "%d\n", out[i]);
    }
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
