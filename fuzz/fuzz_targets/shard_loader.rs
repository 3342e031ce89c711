//! A LITPKDS shard, read directly and through the block loader (shuffled and in order, two
//! ranks), with the loader's options taken from the input too.
#![no_main]
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mdm_data::shards::{BlockLoader, BlockOrder, LoaderOptions, Shard};
use mdm_fuzz::file;

#[derive(Arbitrary, Debug)]
struct Input {
    shard: Vec<u8>,
    block_size: u8,
    vocab_size: u16,
    shuffle: bool,
    buffered: bool,
    rank: bool,
    reads: u8,
}

fuzz_target!(|input: Input| {
    let path = file("train_0000000000.bin", &input.shard);
    if let Ok(shard) = Shard::open(&path) {
        let _ = shard.read(0, usize::from(input.block_size), usize::from(input.vocab_size));
    }
    let options = LoaderOptions {
        block_size: usize::from(input.block_size),
        vocab_size: usize::from(input.vocab_size),
        n_chunks: 1,
        shuffle: input.shuffle,
        order: if input.buffered {
            BlockOrder::Buffered
        } else {
            BlockOrder::Global
        },
        seed: 3,
        rank: usize::from(input.rank),
        world_size: 2,
    };
    if let Ok(mut loader) = BlockLoader::open(&[path], options) {
        for _ in 0..input.reads % 8 {
            if loader.next_block().is_err() {
                break;
            }
        }
        let position = loader.position();
        let _ = loader.restore(position);
    }
});
