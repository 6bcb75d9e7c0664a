// Package integration tests strata end to end against the kernel: every
// test mounts for real, applies the same operations to kernel overlayfs
// (the oracle) and to the system under test (SUT) on equivalent layer
// stacks, and compares every result: the errno and observation of each
// op, then the visible trees.
//
// # Running
//
// As root, on a machine with overlayfs and FUSE (fuse3, fuse-overlayfs,
// dpkg-deb, and a Debian rootfs from .ci/debian-rootfs.sh):
//
//	go test ./integration/...                        # against strata (the default)
//	STRATA_SUT=fuse-overlayfs go test ./integration  # the stand-in SUT: shows the harness finds real differences
//	STRATA_SUT=kernel go test ./integration          # self-check: the kernel against itself must pass
//	STRATA_SEED=N go test -run Random ./integration  # replay one random sequence (seed printed on failure)
//
// Also: STRATA_RANDOM_SEQUENCES and STRATA_RANDOM_OPS scale the random
// test, STRATA_INTEROP_OPS the random interop sequences (150 ops; fewer
// find the op where a failing seed first differs); STRATA_TEST_CACHE is
// where .ci/debian-rootfs.sh cached the rootfs.
//
// TestMain builds ./cmd/strata once, re-runs the test binary in a private
// mount namespace (so no other process on the machine can hold a copy of a
// test mount), and at the end fails the run if any mount under its
// temporary directory, or any process naming it, is left.
//
// # The pieces
//
//   - layers_test.go: layer specs (file, dir, symlink, hardlink, fifo,
//     socketNode, charDev, blockDev, sparse, whiteoutEntry in every format,
//     opaqueDir in every format) and buildLayer.
//   - convert_test.go: the oracle's copy of a layer with OCI and xattr
//     markers turned into the kernel's own (char 0/0, trusted.overlay.opaque).
//   - targets_test.go: kernel overlayfs (fsopen/fsconfig, so 500 layers
//     fit), strata and fuse-overlayfs behind one interface; views mounted in
//     t.TempDir and unmounted in t.Cleanup (lazily only as a reported last
//     resort), waiting for the daemon to exit.
//   - ops_test.go, readdir_test.go: ops as plain data, applied with raw
//     syscalls relative to a descriptor of the mount root; asUser runs one
//     in a child process with another uid.
//   - tree_test.go: the lstat walk (type, mode, owner, size, sha256,
//     SEEK_DATA/SEEK_HOLE extents, symlink target, st_nlink, rdev, xattrs,
//     mtimes the test determined, inode classes, d_ino, d_type, "." and "..")
//     and the comparison. Some things are required of the SUT outright
//     whatever the kernel shows (d_ino == st_ino, "." and "..", one st_dev,
//     no overlay-private xattr visible).
//   - harness_test.go: runScenario (build, mount both, ops, optional
//     remount with st_ino stability, compare) and the mtime bookkeeping.
//   - cases_test.go: one Test per item of the union semantics (fs/doc.go); every case
//     runs as is and with a remount before the comparison.
//   - random_test.go, interop_test.go, debian_test.go: seeded random
//     sequences, the interop check (kernel overlayfs reading the SUT's
//     upper), the dpkg workload on a Debian rootfs.
//
// # Adding a case
//
// Find the Test for the semantic item in cases_test.go and add a scenario
// to its table: a stack (topmost layer first) and the ops. Nothing else:
// each op's result and the final trees are compared with the kernel's, and
// the case runs again with a remount.
//
//	{name: "chmod-lower-dir", stack: []layer{
//		{file("top", "t")},
//		{dir("d", mode(0o750)), file("d/f", "x")},
//	}, ops: []op{opChmod("d", 0o700), opReaddir("d"), opStat("d/f")}},
//
// A bug found by the random test becomes such a case: take the failing
// stack and the last few ops from its report. A new kind of operation is
// an opFunc registered in opKinds (ops_test.go) with a constructor, added
// to randomOp and to mtimeTouched (harness_test.go) if it can change an
// mtime or remove a name.
//
// # Replaying a seed
//
// A random failure prints "Replay: STRATA_SEED=N go test -run 'Random'
// ./integration" together with the layer stack and the ops up to the
// failing one. The stack and ops are a pure function of the seed, so the
// same command replays them exactly (with the same STRATA_RANDOM_OPS).
//
// # What the kernel does differently, on purpose not tested
//
// Kernel overlayfs lists a whiteout that sits in an opaque or unmerged
// lower directory and then fails its lookup; random stacks put whiteouts
// only in merged directories. The kernel lets a user set trusted.overlay.X
// (stored escaped) and shows user.overlay.* xattrs, while strata treats
// both namespaces as private; no op sets them.
package integration
