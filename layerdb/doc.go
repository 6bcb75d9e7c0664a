// Package layerdb is strata's image store: layers, images and containers,
// their metadata in a badger v4 database and their files in plain
// directories, plus the change-set tars that go in (import, commit) and come
// out (save, export).
//
// # On-disk layout
//
// Everything lives under one root (--root, STRATA_ROOT, else DefaultRoot:
// /var/lib/strata for root, $XDG_DATA_HOME/strata or ~/.local/share/strata
// otherwise):
//
//	ROOT/lock                          flock: held by the command that has the database open
//	ROOT/db/                           badger database (metadata only)
//	ROOT/layers/<chain-id-hex>/diff/   a layer's files (a change-set)
//	ROOT/layers/<chain-id-hex>/tar-split.json.zst
//	                                   the layer tar's headers and padding
//	ROOT/containers/<id>/init/         the container's init layer
//	ROOT/containers/<id>/upper/        its writable layer
//	ROOT/containers/<id>/work/         overlay-style work directory
//	ROOT/tmp/<kind>-<pid>-<random>/    work in progress (see Crash safety): a
//	                                   layer, container, trash, or a
//	                                   decompressed archive being imported
//
// A layer directory is named by its ChainID, so a layer shared by two images
// is stored once. Its files are the change-set with whiteouts in one form:
// overlay's native form where the importing process is root (a character
// device 0/0 for a deleted name, trusted.overlay.opaque=y on an opaque
// directory), OCI ".wh.NAME" and ".wh..wh..opq" files otherwise. The union
// filesystem reads both (package whiteout). Overlay's private xattrs
// (trusted.overlay.*, user.overlay.*) in a tar are dropped, so a layer
// cannot forge markers.
//
// The tar-split record (github.com/vbatts/tar-split) lets save rebuild the
// layer's original tar byte for byte from the directory, so the blob digest
// of a saved layer is the DiffID strata reported at import, without keeping
// a second copy of the layer. Save checks the rebuilt digest.
//
// # Schema
//
// Keys are strings; values are JSON.
//
//	layer/<chain-id>      Layer: ChainID, DiffID, Parent (ChainID), Size (file
//	                      bytes), TarSize, Files, Created, CreatedBy, Comment
//	image/<image-id>      Image: ID (digest of the config), Config (the OCI
//	                      config bytes, kept as is), Layers (ChainIDs, base
//	                      first), Names, Created
//	name/<name:tag>       image ID; index of image names (a name is on one image)
//	container/<id>        Container: ID, Name, Image, State, Created
//	cname/<name>          container ID; index of container names
//
// IDs are full digests ("sha256:…"); a reference may be a name, a full ID or
// an unambiguous prefix of the hex. Which images use a layer and which
// containers use an image are answered by scanning image/ and container/
// (the store holds hundreds of records, not millions); a ChainID already
// encodes the whole parent chain.
//
// # Concurrency (guide item 10)
//
// Badger takes an exclusive lock on its directory, so one process at a time
// may have the database open. strata never keeps it open longer than a
// transaction plus a little directory work:
//
//   - Every command opens the store, does its reads and writes, and closes.
//     Open first takes ROOT/lock with flock(LOCK_EX|LOCK_NB), retrying with
//     backoff (5 ms doubling to 250 ms) for at most DefaultLockTimeout (or
//     STRATA_LOCK_TIMEOUT), so concurrent commands queue instead of failing
//     with badger's "cannot acquire directory lock".
//   - Long work runs with the store closed. Import, Commit, Save, Export and
//     Diff are package functions that take the root, not a *Store: they open
//     the store to resolve what they need, close it, do the file work (untar,
//     tar, hashing), and open it again only to publish. Removal moves
//     directories to the trash under the lock and deletes them after Close.
//   - A mount calls Open, MountSpec, Close, and then runs on the plain
//     directories for as long as it likes. Layers do not change once
//     published; a layer an image uses is not removed while the image
//     exists, and rm/rmi/prune refuse to remove directories that a live
//     process holds open (a mount keeps its layer directories open), found
//     by scanning /proc/*/fd, cwd and root, unless forced.
//
// # Crash safety
//
// Every change to the directories follows one protocol, so a kill -9 at any
// instant leaves a store that opens and lists correctly:
//
//  1. New content (a layer being imported or committed, a container being
//     created) is built in ROOT/tmp/<kind>-…, a directory its owner holds an
//     flock on. Nothing refers to it.
//  2. Publishing happens with the store lock held: rename the tmp directory
//     to layers/<chain> or containers/<id>, then commit the transaction
//     that writes its record. A directory with no record is therefore
//     either being published by the lock holder or left by a dead one.
//  3. Removal commits the deletion of the records first, then renames the
//     directories into a locked tmp directory (the trash), then deletes
//     them after releasing the store lock.
//
// Every Open, holding the store lock, finishes or undoes what a dead command
// left: it deletes each tmp entry whose flock it can take (its owner is
// dead), and moves every layers/ and containers/ directory without a record
// to the trash. Badger's write-ahead log (with SyncWrites) makes a committed
// transaction durable; directories are synced (syncfs) before the rename
// that publishes them.
//
// # Hostile tars
//
// A layer tar is untrusted input. Extraction holds the layer root open and
// resolves each entry's parent with openat2(RESOLVE_BENEATH|
// RESOLVE_NO_SYMLINKS|RESOLVE_NO_MAGICLINKS|RESOLVE_NO_XDEV), then creates
// the entry with *at calls and O_NOFOLLOW: no path string is ever joined, and
// no symlink, whether from the tar or not, is followed. Absolute names, ".."
// components, writing through a symlink, hard links to anything not already
// in the layer, whiteouts of invalid names, device nodes when not root,
// whiteouts with data, and a second entry for a file that had data are
// rejected with ErrHostileTar; a truncated or corrupt stream or a digest
// mismatch fails the import. A failed import removes its tmp directory, so
// it leaves nothing behind.
//
// The parsers are fuzzed: FuzzExtractEntries (tars built from entry
// scripts aimed at a file next to the layer) and FuzzExtractTar (raw
// blobs) check that nothing outside the layer changes; FuzzOCILayout,
// FuzzDockerManifest and FuzzSniffArchive read archives through the import
// code. "go test" runs their seed corpora in testdata/fuzz; to fuzz, run
// one at a time, e.g.
//
//	go test -run '^$' -fuzz '^FuzzExtractEntries$' -fuzztime 5m -fuzzminimizetime 1x ./layerdb
//
// (without -fuzzminimizetime, minimizing each new input takes up to a
// minute, during which nothing else runs).
//
// # Consistent commit
//
// Commit reads the container's upper directory directly (no mount needed)
// and may run while the container is mounted and busy. It takes an
// optimistic snapshot: while writing the change-set it records every
// entry's stamp (inode, size, mode, link count, mtime, ctime, taken before
// reading the entry), and afterwards stats every entry again. If nothing
// changed, every file and every directory listing was constant from the
// moment it was read to the end of the walk, so the tar equals the tree as
// it was at that end: a state that really existed. If something changed, the
// new layer is discarded and the snapshot retried, up to commitAttempts
// times, then commit fails and asks to quiesce the container. Data still in
// a mount's kernel page cache and not yet written to the upper directory is
// not seen; that is what sync(1) in the container is for.
//
// # Formats
//
// DiffIDs are sha256 of the uncompressed tar, ChainIDs follow the OCI config
// spec, image IDs are the config digest. Import reads OCI image layouts
// (directories or oci-archive tars), docker-archive tars (docker save,
// podman save, skopeo), and root filesystem tars or directories; layers may
// be plain, gzip or zstd (sniffed from their magic bytes) and are verified
// against the manifest's blob digest and the config's DiffID while
// streaming.
//
// An archive is told from a root filesystem tar by its content, never its
// file name: a tar is an image archive when every entry has a name image
// archives use (manifest.json, repositories, index.json, oci-layout,
// blobs/, <hex>.json, <hex>.tar, <hex>/) and its marker files are there.
// A gzip or zstd file ("docker save | gzip") is decompressed into a work
// directory under tmp/ while its names pass that test, since layers are
// then read by offset; a compressed root filesystem is recognised at its
// first foreign name, so only that prefix is decompressed twice. Save writes an OCI image layout plus docker's manifest.json in
// one tar (what docker 25+ writes), with uncompressed layers.
package layerdb
