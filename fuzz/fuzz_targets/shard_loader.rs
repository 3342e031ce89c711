//! A LITPKDS shard, read directly and through the block loader: the first 6 bytes choose the
//! loader's options (block size, vocabulary, order, shuffle, rank of 2, reads), the rest is the
//! shard file.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mdm_data::shards::{BlockLoader, BlockOrder, LoaderOptions, Shard};
use mdm_fuzz::{file, scratch};

fuzz_target!(|data: &[u8]| {
    if data.len() < 6 {
        return;
    }
    let (head, shard) = data.split_at(6);
    let path = file(scratch(), "train_0000000000.bin", shard);
    let block_size = usize::from(head[0]);
    let vocab_size = usize::from(u16::from_le_bytes([head[1], head[2]]));
    if let Ok(shard) = Shard::open(&path) {
        let _ = shard.read(0, block_size, vocab_size);
        let _ = shard.read(usize::from(head[5]), block_size, vocab_size);
    }
    let options = LoaderOptions {
        block_size,
        vocab_size,
        n_chunks: 1,
        shuffle: head[3] & 1 == 1,
        order: if head[3] & 2 == 2 {
            BlockOrder::Buffered
        } else {
            BlockOrder::Global
        },
        seed: 3,
        rank: usize::from(head[3] >> 7),
        world_size: 2,
    };
    if let Ok(mut loader) = BlockLoader::open(&[path], options) {
        for _ in 0..head[4] % 8 {
            if loader.next_block().is_err() {
                break;
            }
        }
        let position = loader.position();
        let _ = loader.restore(position);
    }
});
