use super::*;

/// A disk with `/d/f` holding `synced` (synced, name committed) and then `unsynced` appended
/// in `writes` separate writes, not synced.
fn disk_with(seed: u64, synced: &[u8], unsynced: &[&[u8]]) -> (SimDisk, Arc<dyn Disk>) {
    let sim = SimDisk::new(seed);
    let disk = sim.mount();
    disk.create_dir_all(Path::new("/d")).unwrap();
    let mut f = disk.open(Path::new("/d/f"), true).unwrap();
    f.write(synced).unwrap();
    f.sync_data().unwrap();
    disk.sync_dir(Path::new("/d")).unwrap();
    for w in unsynced {
        f.write(w).unwrap();
    }
    (sim, disk)
}

#[test]
fn synced_bytes_survive_and_unsynced_ones_are_lost_kept_or_torn() {
    let (mut kept_all, mut lost_some, mut torn, mut out_of_order) = (0, 0, 0, 0);
    let slots: [(usize, &[u8]); 3] = [(8, b"one|"), (12, b"two|"), (16, b"three|")];
    for seed in 0..300 {
        let (sim, _) = disk_with(seed, b"durable|", &[b"one|", b"two|", b"three|"]);
        sim.crash();
        let raw = sim.mount().read(Path::new("/d/f")).unwrap();
        assert!(raw.starts_with(b"durable|"), "seed {seed}: {raw:?}");
        let tail = &raw[8..];
        let whole = b"one|two|three|";
        if tail == whole {
            kept_all += 1;
        } else if whole.starts_with(tail) && [0, 4, 8].contains(&tail.len()) {
            lost_some += 1;
        } else if sim.damage().writes_torn == 0 {
            // Whole writes with holes (zeros) where earlier ones did not land.
            out_of_order += 1;
            let ends = slots.iter().map(|(at, w)| at + w.len());
            assert!(ends.clone().any(|e| e == raw.len()), "seed {seed}: {raw:?}");
            for (at, w) in slots.iter().filter(|(at, _)| *at < raw.len()) {
                let got = &raw[*at..at + w.len()];
                assert!(
                    got == *w || got.iter().all(|&b| b == 0),
                    "seed {seed}: {raw:?}"
                );
            }
        } else {
            // A write cut short, or its length reached with zeros or garbage for bytes, or its
            // end without its start.
            torn += 1;
            assert_eq!(sim.damage().writes_torn, 1, "seed {seed}: {tail:?}");
        }
    }
    assert!(
        kept_all > 0 && lost_some > 0 && torn > 0 && out_of_order > 0,
        "{kept_all} {lost_some} {torn} {out_of_order}"
    );
}

#[test]
fn an_overwrite_in_place_is_kept_lost_or_torn_and_never_moves_the_rest() {
    // A preallocated file: ten synced zeros, then "abcd" written over bytes 2..6, not synced.
    let (mut kept, mut lost, mut torn, mut end_only) = (0, 0, 0, 0);
    for seed in 0..300 {
        let (sim, disk) = disk_with(seed, &[0; 10], &[]);
        let mut f = disk.open(Path::new("/d/f"), false).unwrap();
        f.seek(2).unwrap();
        f.write(b"abcd").unwrap();
        assert_eq!(disk.read(Path::new("/d/f")).unwrap(), b"\0\0abcd\0\0\0\0");
        sim.crash();
        let raw = sim.mount().read(Path::new("/d/f")).unwrap();
        assert_eq!(
            raw.len(),
            10,
            "seed {seed}: an overwrite never changes the length"
        );
        assert_eq!(
            &raw[..2],
            &[0, 0],
            "seed {seed}: bytes before it are untouched"
        );
        assert_eq!(
            &raw[6..],
            &[0; 4],
            "seed {seed}: bytes after it are untouched"
        );
        let part = &raw[2..6];
        let zeros_then_end =
            |n: usize| part[..n].iter().all(|&b| b == 0) && part[n..] == b"abcd"[n..];
        match part {
            b"abcd" => kept += 1,
            [0, 0, 0, 0] => lost += 1,
            // Sectors out of order: the end of the write landed, its start did not.
            _ if (1..4).any(zeros_then_end) => end_only += 1,
            // Cut short: a start of the write, then zeros or garbage.
            _ => torn += 1,
        }
    }
    assert!(
        kept > 0 && lost > 0 && torn > 0 && end_only > 0,
        "{kept} {lost} {torn} {end_only}"
    );
}

#[test]
fn a_cursor_goes_no_further_than_the_end() {
    let (_sim, disk) = disk_with(1, b"abc", &[]);
    let mut f = disk.open(Path::new("/d/f"), false).unwrap();
    assert_eq!(f.seek(4).unwrap_err().kind(), io::ErrorKind::InvalidInput);
    f.seek(1).unwrap();
    f.write(b"XYZ").unwrap();
    f.set_len(5).unwrap();
    f.write(b"!").unwrap();
    assert_eq!(disk.read(Path::new("/d/f")).unwrap(), b"aXYZ\0!");

    let dir = tempfile::tempdir().unwrap();
    let os = os();
    let path = dir.path().join("f");
    let mut f = os.open(&path, true).unwrap();
    f.write(b"abc").unwrap();
    assert_eq!(f.seek(4).unwrap_err().kind(), io::ErrorKind::InvalidInput);
    f.seek(1).unwrap();
    f.write(b"XYZ").unwrap();
    f.set_len(5).unwrap();
    f.write(b"!").unwrap();
    assert_eq!(os.read(&path).unwrap(), b"aXYZ\0!");
}

#[test]
fn a_sync_makes_everything_before_it_durable() {
    for seed in 0..50 {
        let (sim, disk) = disk_with(seed, b"a", &[b"b", b"c"]);
        let mut f = disk.open(Path::new("/d/f"), false).unwrap();
        f.sync_data().unwrap();
        sim.crash();
        assert_eq!(sim.mount().read(Path::new("/d/f")).unwrap(), b"abc");
    }
}

#[test]
fn names_survive_in_the_order_they_were_made_until_a_directory_sync() {
    let mut outcomes = BTreeSet::new();
    for seed in 0..200 {
        let (sim, disk) = disk_with(seed, b"x", &[]);
        for name in ["/d/1", "/d/2", "/d/3"] {
            let mut f = disk.open(Path::new(name), true).unwrap();
            f.sync_all().unwrap();
        }
        disk.rename(Path::new("/d/f"), Path::new("/d/g")).unwrap();
        sim.crash();
        let mut names = sim.mount().list(Path::new("/d")).unwrap();
        names.sort();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        // A prefix of: create 1, create 2, create 3, rename f to g (whole or not at all).
        let expect: [&[&str]; 5] = [
            &["f"],
            &["1", "f"],
            &["1", "2", "f"],
            &["1", "2", "3", "f"],
            &["1", "2", "3", "g"],
        ];
        assert!(expect.contains(&names.as_slice()), "seed {seed}: {names:?}");
        outcomes.insert(names.join(","));
    }
    assert_eq!(outcomes.len(), 5, "{outcomes:?}");
    // A directory sync commits every name change.
    let (sim, disk) = disk_with(7, b"x", &[]);
    disk.rename(Path::new("/d/f"), Path::new("/d/g")).unwrap();
    disk.sync_dir(Path::new("/d")).unwrap();
    sim.crash();
    assert_eq!(sim.mount().list(Path::new("/d")).unwrap(), vec!["g"]);
    assert_eq!(sim.mount().read(Path::new("/d/g")).unwrap(), b"x");
}

#[test]
fn handles_from_before_a_crash_fail() {
    let (sim, disk) = disk_with(1, b"x", &[]);
    let mut f = disk.open(Path::new("/d/f"), false).unwrap();
    sim.crash();
    assert!(f.write(b"late").is_err());
    assert!(f.sync_data().is_err());
    assert!(disk.read(Path::new("/d/f")).is_err());
    assert!(disk.remove(Path::new("/d/f")).is_err());
    assert_eq!(sim.mount().read(Path::new("/d/f")).unwrap(), b"x");
}

#[test]
fn missing_files_and_directories_are_not_found() {
    let sim = SimDisk::new(1);
    let disk = sim.mount();
    let kind = |r: io::Result<Vec<u8>>| r.unwrap_err().kind();
    assert_eq!(kind(disk.read(Path::new("/nope"))), io::ErrorKind::NotFound);
    assert!(disk.open(Path::new("/no/dir/f"), true).is_err());
    assert_eq!(
        disk.list(Path::new("/no")).unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
    assert!(disk.read_at(Path::new("/nope"), 0, 1).is_err());
}

#[test]
fn a_cut_power_fails_every_later_operation_and_the_crash_keeps_the_cut() {
    let (sim, disk) = disk_with(3, b"synced", &[]);
    let mut f = disk.open(Path::new("/d/f"), false).unwrap();
    sim.cut_power_after(1);
    f.write(b"+one").unwrap();
    // The cut is due at the next operation: it fails, and so does everything after.
    assert!(f.sync_data().is_err());
    assert!(f.write(b"+two").is_err());
    assert!(disk.read(Path::new("/d/f")).is_err());
    sim.crash();
    let raw = sim.mount().read(Path::new("/d/f")).unwrap();
    assert!(raw.starts_with(b"synced") && raw.len() <= 10, "{raw:?}");
    assert_eq!(sim.damage().crashes, 1, "one power failure, counted once");
    // A crash cancels a cut that has not fired.
    sim.cut_power_after(100);
    sim.crash();
    let disk = sim.mount();
    for _ in 0..200 {
        disk.read(Path::new("/d/f")).unwrap();
    }
}
