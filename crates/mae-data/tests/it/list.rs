//! Image lists (`list:`): `.txt` paths and `.csv` `path,label` rows, relative to the list.

use std::path::Path;
use std::sync::Arc;

use mae_data::{open, DataError, DataSpec, Dataset, OpenOptions};

use crate::common::{copy_digits, write};

fn open_list(list: &Path) -> mae_data::Result<Arc<dyn Dataset>> {
    open(&format!("list:{}", list.display()).parse::<DataSpec>()?, &OpenOptions::default())
}

/// The path of `file` relative to `dir`, as a list in `dir` writes it.
fn rel(file: &Path, dir: &Path) -> String {
    file.strip_prefix(dir).unwrap().display().to_string()
}

#[test]
fn a_txt_list_reads_its_files_relative_to_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let files = copy_digits(&tmp.path().join("imgs"), 2, 2);
    let elsewhere = tempfile::tempdir().unwrap();
    let absolute = copy_digits(elsewhere.path(), 1, 1).remove(0).0;
    let lines = format!(
        "# digits\n{}\n\n  {}\n{}\n# the end\n",
        rel(&files[3].0, tmp.path()),
        rel(&files[0].0, tmp.path()),
        absolute.display()
    );
    write(&tmp.path().join("train.txt"), lines.as_bytes());
    let ds = open_list(&tmp.path().join("train.txt")).unwrap();
    assert_eq!((ds.len(), ds.is_labeled()), (3, false));
    assert_eq!(ds.origin(0), tmp.path().join(rel(&files[3].0, tmp.path())).display().to_string());
    assert_eq!(ds.sample_name(1), Some(rel(&files[0].0, tmp.path())));
    let folder =
        open(&format!("folder:{}/imgs", tmp.path().display()).parse().unwrap(), &OpenOptions::default())
            .unwrap();
    assert_eq!(
        ds.get(0).unwrap().image.as_standard().unwrap().as_bytes(),
        folder.get(3).unwrap().image.as_standard().unwrap().as_bytes()
    );
    assert_eq!(
        ds.get(2).unwrap().image.as_standard().unwrap().as_bytes(),
        image::open(&absolute).unwrap().as_bytes()
    );
}

#[test]
fn a_csv_list_labels_by_sorted_class_names_or_by_integers() {
    let tmp = tempfile::tempdir().unwrap();
    let files = copy_digits(&tmp.path().join("imgs"), 2, 2);
    let p = |i: usize| rel(&files[i].0, tmp.path());
    let named = format!("path,label\n{},zebra\n{},ant\n\"{}\",zebra\n", p(0), p(1), p(2));
    write(&tmp.path().join("named.csv"), named.as_bytes());
    let ds = open_list(&tmp.path().join("named.csv")).unwrap();
    assert_eq!(ds.class_names(), ["ant", "zebra"]);
    let labels: Vec<_> = (0..3).map(|i| ds.get(i).unwrap().label).collect();
    assert_eq!(labels, [Some(1), Some(0), Some(1)]);

    let numbered = format!("{},3\n{},0\n", p(3), p(1));
    write(&tmp.path().join("numbered.csv"), numbered.as_bytes());
    let ds = open_list(&tmp.path().join("numbered.csv")).unwrap();
    assert_eq!(ds.class_names().len(), 4, "classes 0..=3");
    assert_eq!((ds.get(0).unwrap().label, ds.get(1).unwrap().label), (Some(3), Some(0)));
}

#[test]
fn errors_name_the_list_and_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let files = copy_digits(&tmp.path().join("imgs"), 1, 1);
    let good = rel(&files[0].0, tmp.path());
    let cases = [
        ("bad.csv", format!("path,label\n{good},1\n\n{good}\n"), "line 4"),
        ("empty_label.csv", format!("{good},\n"), "line 1"),
        ("missing.txt", format!("{good}\n# ok\nimgs/nope.png\n"), "line 3"),
    ];
    for (name, text, line) in cases {
        let list = tmp.path().join(name);
        write(&list, text.as_bytes());
        let err = open_list(&list).err().unwrap();
        let message = err.to_string();
        assert!(matches!(err, DataError::Format { .. }), "{name}: {message}");
        assert!(message.contains(name) && message.contains(line), "{name}: {message}");
    }
    let err = open_list(&tmp.path().join("absent.txt")).err().unwrap();
    assert!(matches!(err, DataError::NotFound { .. }), "{err}");
    write(&tmp.path().join("comments.txt"), b"# nothing\n\n");
    assert!(matches!(open_list(&tmp.path().join("comments.txt")), Err(DataError::Empty { .. })));
}
