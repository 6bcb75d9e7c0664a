// Package fs is strata's union filesystem: read-only lower layers stacked
// under one writable upper layer, served over FUSE with go-fuse v2.
//
// # The view
//
// A name is looked up in the upper layer first, then in the lower layers
// from the top down; the first hit wins. A whiteout stops the search (the
// name is deleted) and an opaque directory hides everything below it. Every
// whiteout format is read: overlay's char device 0/0, a zero-size file with
// an overlay whiteout xattr (in a directory marked opaque="x"), OCI ".wh.NAME"
// files, overlay's opaque xattr (trusted.overlay.* or user.overlay.*) and the
// OCI ".wh..wh..opq" marker. None is ever shown, and the private xattrs
// (trusted.overlay.* and user.overlay.*, strata's own included) are neither
// listed nor settable.
//
// # What is stored where
//
// The upper layer is a valid overlayfs upper directory: kernel overlayfs
// mounted with redirect_dir=on,metacopy=on on the same lowers shows the same
// tree. As root strata writes:
//
//   - deletions as char device 0/0 whiteouts, new directories over deleted
//     names with trusted.overlay.opaque=y;
//   - renamed directories with lower content with trusted.overlay.redirect
//     set to the absolute path of that content in the lower layers;
//   - metadata-only copy-ups (chmod, chown, utimes, xattrs on a lower file)
//     as a sparse file of the right size with trusted.overlay.metacopy and
//     trusted.overlay.redirect naming the lower data;
//   - trusted.overlay.strata.ino on every copied-up object: the inode
//     number it had below, so st_ino never changes across copy-up and
//     remount. It sits in overlay's namespace, where kernel overlayfs
//     ignores and hides names it does not know.
//
// Without root, the same is written with user.overlay.* xattrs and OCI
// ".wh." whiteout files.
//
// The work directory holds "strata/" (temporaries; emptied at every mount,
// so a crash never leaves half a copy in the view) and "strata-index/"
// (copies of hard-linked lower files, see index.go). Anything else in it is
// refused at mount time.
//
// # Inode numbers
//
// st_ino of an object is its backing inode number in the layer it came
// from, with the index of that layer's filesystem folded into the top bits
// when the layers span several filesystems (stack order, upper first, so the
// same stack numbers the same way on every mount). A copy-up keeps the
// number (trusted.overlay.strata.ino), hard links in a lower layer stay one inode
// (the index), and readdir's d_ino equals st_ino. st_dev is the mount's.
//
// # Reaching backing files
//
// Nothing is reached by joining path strings onto a layer path. Each layer
// root is held as an O_PATH descriptor and every path below it is resolved
// with openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS|RESOLVE_NO_MAGICLINKS|
// RESOLVE_NO_XDEV), then the last step is an *at call with
// AT_SYMLINK_NOFOLLOW. A symlink, "..", or a mount inside a layer can never
// make the daemon touch a file outside the layer roots. xattrs of a name are
// read with the *xattrat system calls, never following a symlink.
//
// # Nodes and locks
//
// A node is one inode of the view, keyed by inode number in union.nodes
// (rename and remove need the node the kernel knows). Lower paths are
// fixed for the life of a node; the upper path is derived from parent/name
// links, and a hard link's other names the kernel knows are kept as
// aliases (aliases.go). A node the kernel holds has a FUSE node id that no
// other node ever gets: the kernel never takes a new node for an old one
// it still holds. kernel.go keeps the protocol's books: the nodes the
// kernel holds (union.ids, a slice indexed by node id) with their lookup
// counts (node.kref), and the open file handles; a node leaves the tables
// when FORGET gives back its last reference. When the last name of an upper object goes (unlink,
// rmdir, a rename over it), its node leaves the table at once: the kernel
// may hold the node a while yet, and the upper filesystem may give the
// freed inode number to the next object it makes. Until the kernel forgets
// it, such a node answers a stat with the object's last attributes and no
// link (union.removed), as overlayfs does for an O_PATH descriptor or a
// working directory that outlived its object.
//
// Memory: a node is allocated for every inode the kernel holds, so it is
// kept in Go's 128-byte allocation class (node_test.go): what only a
// directory needs lives in dirState, open-file bookkeeping is allocated at
// the first open, the xattr name cache is one pointer, and nothing else is
// kept per node but its entry in union.nodes and its slot in union.ids. A
// directory keeps no map of its children: the kernel's dentry cache is
// that map.
//
// Lock order, outermost first:
//
//  1. union.treeMu. Rename holds it exclusively while it moves the backing
//     entry and the parent/name links; every other operation that turns a
//     node into an upper path holds it shared while it does so.
//  2. node.mu of a directory, then of its children. Copy-up takes the
//     parent's mu before the child's (parents are copied up first); two
//     unrelated nodes are never locked together.
//  3. Leaf locks, never held while taking another: union.nodesMu (the
//     inode table, the node ids and lookup counts, the aliases),
//     kernelFS.filesMu (the file handles), dirCursors.mu (the shared
//     listing snapshots), union.tmpMu, each node's cached directory
//     descriptor lock (dirfd.go), each open file's descriptor lock
//     (file.go; a lazy handle's), the list of retired backing files
//     (retire.go), each listing's lock on its kept lower
//     directory descriptors (dirlist.go; a child's stat takes its
//     parent's), the prefetcher's lock (prefetch.go) and the READDIRPLUS
//     policy's lock (plus.go).
//
// # Copy-up
//
// See copyup.go: the copy is built in the work directory and renamed into
// place with RENAME_NOREPLACE after data (FICLONE, or copy_file_range over
// SEEK_DATA/SEEK_HOLE extents so holes stay holes), owner, mode, xattrs
// (security.capability after chown) and times are set and the file is
// fsynced (unless volatile). node.mu serialises copy-ups of one node and the
// state is checked again after taking it, so two writers cause one copy-up.
//
// # Caching
//
// Lower layers never change, and every change to the upper layer goes
// through this daemon, which answers each change with fresh entries and
// attributes. So entries, attributes and negative lookups are given to the
// kernel with a one-hour timeout. Each directory's lower layers are read
// once, into a merged listing kept on the node while the kernel holds it
// (lowerListing): a lookup of a missing name costs a binary search in it,
// whatever the number of layers. The listing also keeps the attributes of the
// topmost lower directory as its read left them (dirattr.go): the kernel
// asks for a directory's attributes again after every read of it (the
// atime went stale), and a directory with no upper part answers without a
// system call. The upper directory is read live.
//
// A lookup does not wait for a huge layer directory to be read: one of
// Config.ProbeDirSize bytes or more (256 KiB, about 10,000 entries, by
// default; the probe_size option) is left out of the merge a lookup
// builds, and each name is looked up in it with fstatat until the whole
// merge, asked of the prefetcher at once, is built in the background; the
// node then swaps it in (probe.go). Both ways decide a name with the same
// rule (mergeName). A READDIR waits for the whole merge.
//
// Walkers go from a directory into its subdirectories, so when a node's
// merged listing is built, two background workers build the listings of
// its subdirectories and stat their entries, one level ahead of the walker
// (prefetch.go). A merged lower listing depends only on the lower paths
// and layers, so the node takes the prefetched one as its own. The workers
// also note which entries have no xattrs at all; their nodes start with an
// empty, known xattr name list.
//
// READDIRPLUS asks for every entry's attributes. Subdirectories always get
// them; files get them only while the recent past says they are used (a
// per-mount policy counts how many files of listings that left them bare
// were then looked up one by one; plus.go). A find-like walk thus costs
// no stat and no node per file, and ls -l still gets its attributes in
// the listing.
//
// Directories are never opened in the protocol: OPENDIR is answered ENOSYS
// once, after which the kernel sends neither OPENDIR nor RELEASEDIR and
// keeps every listing it has read in its cache (FOPEN_CACHE_DIR|
// FOPEN_KEEP_CACHE is its default then), so opening a cached directory
// costs no round trip. The listings are served through handles the daemon
// opens itself (dircursor.go). The kernel drops a directory's cached
// listing itself when an entry is created, removed or renamed in it; a
// directory moved to a new parent has its own listing dropped by
// notification (its ".." changed). The kernel also caches POSIX ACLs
// (EnableAcl) and symlink targets (a target never changes), and each node
// caches its xattr names, so "has this file security.selinux?", which ls -l
// asks of every file, is answered without a system call.
// FLUSH is answered ENOSYS once, after which the kernel stops sending it.
// With HANDLE_KILLPRIV_V2 the kernel leaves dropping set-id bits and
// capabilities to the daemon: it drops set-id bits for callers without
// CAP_FSETID itself (attr.go killSetID, file.go killSetIDForWriter), and
// the backing filesystem drops capabilities. The kernel still asks for
// security.capability before each chown (the VFS's own check) and before
// the first write after each change of a file's attributes (until it
// marks the inode S_NOSEC); the node's xattr name cache, learnt at the
// first, answers the rest.
//
// # Passthrough
//
// On kernels with FUSE passthrough, regular files are read and written by
// the kernel directly on the backing file. One backing file is registered
// per node, through an open file description of its own (a handle's locks
// must not outlive the handle), and reused for every passthrough open of
// the node; it stays registered after the last handle closes, for the
// next open, until the node is forgotten, its object removed or its data
// copied up (file.go backingID and keepBacking; at most 8,192 idle ones a
// mount, fewer under a low descriptor limit). The descriptor registered
// stays open with it. A read-only open that would pass through on the
// registered file is lazy (file.go openLazily): no descriptor is opened
// until a request on the handle needs one, which then reopens the
// registered descriptor through /proc/self/fd, a new open file
// description of the same object wherever it has moved. The node also
// remembers that the registered upper file has no set-id bit or
// capability until a change could add one, so such an open makes no
// system call at all. A removed object's registration, which holds the
// file's last reference, is let go of a few milliseconds later in a batch
// off the request path (retire.go; big files at once, and STATFS first
// lets go of all).
//
// The kernel allows one backing file per inode while passthrough opens
// are live, and no other kind of open beside them. A file opened from a
// lower layer and then copied up while that handle is open would have its
// new, writable opens land on the LOWER file. So such an open supersedes
// the node (file.go handOut): it leaves the inode table, the open answers
// ESTALE, the kernel looks the path up again and gets a new node (same
// st_ino, new node id), which is a new kernel inode, and retries the open
// there. Old handles keep reading the lower content (kernel overlayfs
// since 4.19 moves them to the copy instead). While an object has two
// kernel inodes, neither caches its attributes, and the superseded node
// sends every request but I/O on its open handles to the node now in the
// table (node.current): its own name would go stale when the file is
// renamed. Upper files with set-id bits or a capability are served
// through FUSE, never by passthrough: a writer so that privileges drop as
// the writer, a reader so that it shares the writer's kernel inode. A
// node keeps the way it serves a file (passthrough on the lower file, on
// the upper file, or through FUSE) while any of its handles is open;
// another need meanwhile supersedes it, because the kernel refuses an open
// that would mix them on one inode (file.go, openState).
//
// # Serving
//
// As root, Mount makes the mount itself and package fuseloop reads the
// requests: one goroutine reads and answers them in turn, and hands
// reading to another goroutine only for requests that may wait (locks,
// fsync, data copy-up) or that stall, because on small machines a thread
// wake-up per request costs more than the request. kernelFS (kernel.go)
// turns requests into calls on nodes; go-fuse's server negotiates INIT and
// sends notifications. Where the kernel offers
// FUSE over io_uring (the fuse module's enable_uring=Y) requests come
// through per-CPU rings instead of read(2) on /dev/fuse, served on a
// thread pinned to the CPU that made them, in the idle scheduling class
// while the machine has CPU time to spare (-o io_uring=off turns rings
// off, -o io_uring_sched=idle|normal fixes the class; fuseloop's package
// doc says why). Unprivileged mounts go
// through fusermount3 and go-fuse's own loop. The request path is
// yieldingFS (yield.go) over kernelFS, which reads directories without
// opens (dircursor.go).
//
// # Errors
//
// Inside the package functions return errors wrapped with %w; the FUSE
// methods turn them into an errno in one place, toErrno (errno.go).
package fs
