//! The synthetic shapes: deterministic, balanced, and with the class in the picture.

use mae_data::{Dataset, Split, SyntheticShapes, SHAPES};

fn pixels(ds: &SyntheticShapes, i: usize) -> Vec<u8> {
    ds.get(i).unwrap().image.into_standard().unwrap().into_rgb8().into_raw()
}

#[test]
fn deterministic_for_a_seed_and_independent_of_count() {
    let a = SyntheticShapes::new(100, 32, 7, Split::Train).unwrap();
    let b = SyntheticShapes::new(20, 32, 7, Split::Train).unwrap();
    assert_eq!(pixels(&a, 13), pixels(&b, 13));
    let other_seed = SyntheticShapes::new(20, 32, 8, Split::Train).unwrap();
    let test_split = SyntheticShapes::new(20, 32, 7, Split::Test).unwrap();
    assert_ne!(pixels(&a, 13), pixels(&other_seed, 13));
    assert_ne!(pixels(&a, 13), pixels(&test_split, 13));
    assert_eq!(a.get(13).unwrap().label, Some(13 % 8));
    assert_eq!(a.class_names(), SHAPES.map(String::from));
    let big = SyntheticShapes::new(1, 224, 0, Split::Train).unwrap();
    assert_eq!(big.get(0).unwrap().image.as_standard().unwrap().width(), 224);
    assert!(SyntheticShapes::new(0, 32, 0, Split::Train).is_err());
    assert!(SyntheticShapes::new(5, 2, 0, Split::Train).is_err());
}

/// Gray 1-NN on raw pixels: weak (position and colour vary), yet well above chance; a learned
/// shape feature has much more to gain, which is what the k-NN check of MAE features needs.
#[test]
fn classes_are_visible_to_a_trivial_classifier() {
    let features = |ds: &SyntheticShapes, i: usize| -> Vec<f32> {
        let gray = ds.get(i).unwrap().image.into_standard().unwrap().into_luma8();
        let mean = gray.iter().map(|&v| v as f32).sum::<f32>() / gray.len() as f32;
        // Centred and sign-normalised: the shape's contrast with its background may go either way.
        let v: Vec<f32> = gray.iter().map(|&v| v as f32 - mean).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
        v.iter().map(|x| (x / norm).abs()).collect()
    };
    let train = SyntheticShapes::new(800, 16, 0, Split::Train).unwrap();
    let test = SyntheticShapes::new(200, 16, 0, Split::Test).unwrap();
    let bank: Vec<Vec<f32>> = (0..train.len()).map(|i| features(&train, i)).collect();
    let mut correct = 0;
    for i in 0..test.len() {
        let q = features(&test, i);
        let nearest = (0..bank.len())
            .min_by(|&a, &b| {
                let d = |j: usize| bank[j].iter().zip(&q).map(|(x, y)| (x - y) * (x - y)).sum::<f32>();
                d(a).total_cmp(&d(b))
            })
            .unwrap();
        correct += (nearest % 8 == i % 8) as usize;
    }
    let accuracy = correct as f64 / test.len() as f64;
    println!("raw-pixel 1-NN accuracy {accuracy}");
    assert!(accuracy > 0.25, "1-NN accuracy {accuracy} vs chance 0.125");
}
