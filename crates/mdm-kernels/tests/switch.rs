//! The run-time switch: off, burn-flex runs the composition; on again, the kernels. (Its own test
//! binary: the switch is process-wide.)

use burn::backend::Flex;
use burn::tensor::{Distribution, Tensor};
use mdm_kernels::{fused, set_fused, Kernels};

fn attention_is_fused() -> bool {
    let device = Default::default();
    let q = Tensor::<Flex, 4>::random([2, 3, 5, 4], Distribution::Default, &device);
    let out = Flex::attention(q.clone(), q.clone(), q, None, 0.5);
    // the kernel writes [B, T, H, D] contiguous; the composition returns a transposed view
    out.into_primitive().tensor().is_contiguous()
}

#[test]
fn the_switch_chooses_between_kernels_and_composition() {
    assert!(fused(), "on by default (MDM_KERNELS unset)");
    assert!(attention_is_fused());
    set_fused(false);
    assert!(!fused());
    assert!(!attention_is_fused());
    set_fused(true);
    assert!(attention_is_fused());
}
