package fs

import (
	"math"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// kernelFS speaks the FUSE protocol for the union: it turns the kernel's
// node ids and file handles into nodes and files, calls their methods, and
// keeps the books the protocol asks for (lookup counts, open handles,
// passthrough backing files). go-fuse decodes nothing here that strata
// does not use: the requests arrive from fuseloop (or go-fuse's own loop
// for an unprivileged mount) already split into Go structs.
//
// Node ids. A node the kernel holds has a slot in union.ids, and its id
// (node.id) is the slot number in the low 32 bits and a sequence number in
// the high ones: a slot is reused once the kernel forgets its node, but
// the id is not, so an id the kernel still holds can never name a newer
// node (and a slice of slots costs 8 bytes a node, a map about 40). The
// root is id 1 (FUSE_ROOT_ID). node.kref counts the kernel's references:
// one per entry handed out (LOOKUP, CREATE, MKDIR, MKNOD, SYMLINK, LINK,
// TMPFILE, and each READDIRPLUS entry with attributes), given back by
// FORGET. Both are guarded by union.nodesMu, and a reference is taken in
// the same critical section that finds or makes the node (newChild), so a
// FORGET racing a LOOKUP either drops the node before the lookup looks
// (which then makes a new one) or leaves it with the lookup's reference.
//
// union.nodesMu and filesMu are leaf locks (see the lock order in doc.go).
//
// File handles are keys into files; directories have none (dircursor.go).
type kernelFS struct {
	fuse.RawFileSystem // ENOSYS for the requests strata does not serve

	u    *union
	root *node
	dirs *dirCursors

	filesMu sync.Mutex
	files   map[uint64]*file
	lastFh  uint64

	// forgets counts forgotten nodes and listed names; collecting is
	// set while a collection they started runs (forgotten).
	forgets    atomic.Uint64
	collecting atomic.Bool
}

func newKernelFS(root *node) *kernelFS {
	u := root.u
	root.kref = 1 // the kernel's own, never forgotten
	root.id.Store(rootID)
	u.nodesMu.Lock()
	u.ids = []*node{nil, root} // slot 0 is never an id: 0 means none
	u.nodesMu.Unlock()
	u.root = root
	return &kernelFS{
		RawFileSystem: fuse.NewDefaultRawFileSystem(),
		u:             u,
		root:          root,
		dirs:          newDirCursors(),
		files:         map[uint64]*file{},
	}
}

// rootID is the node id of the root directory in the FUSE protocol.
const rootID = fuse.FUSE_ROOT_ID

func (k *kernelFS) String() string { return "strata" }

func (k *kernelFS) Init(s *fuse.Server) { k.u.srv.Store(s) }

// OnUnmount releases what the root holds; the kernel never forgets it.
func (k *kernelFS) OnUnmount() { k.root.release() }

// ctx is the context node methods get: the caller's identity (create
// ownership, set-id rules) and the request's interrupt channel.
func ctxOf(h *fuse.InHeader, cancel <-chan struct{}) *fuse.Context {
	return &fuse.Context{Caller: h.Caller, Cancel: cancel}
}

// node returns the node the kernel means by id, or nil for an id it does
// not hold (a protocol error; answered with ESTALE).
func (k *kernelFS) node(id uint64) *node {
	k.u.nodesMu.Lock()
	n := k.u.nodeByIDLocked(id)
	k.u.nodesMu.Unlock()
	return n
}

// nodeByIDLocked returns the node with id, or nil. Caller holds
// u.nodesMu.
func (u *union) nodeByIDLocked(id uint64) *node {
	slot := uint32(id)
	if int(slot) >= len(u.ids) {
		return nil
	}
	if n := u.ids[slot]; n != nil && n.id.Load() == id {
		return n
	}
	return nil
}

// newIDLocked gives n a slot and an id. Caller holds u.nodesMu.
func (u *union) newIDLocked(n *node) {
	var slot uint32
	if k := len(u.freeIDs); k > 0 {
		slot = u.freeIDs[k-1]
		u.freeIDs = u.freeIDs[:k-1]
	} else {
		slot = uint32(len(u.ids))
		u.ids = append(u.ids, nil)
	}
	u.lastSeq++
	u.ids[slot] = n
	n.id.Store(uint64(slot) | uint64(u.lastSeq)<<32)
}

// freeIDLocked empties the slot of a node the kernel forgot. Caller holds
// u.nodesMu.
func (u *union) freeIDLocked(n *node) {
	id := n.id.Load()
	if id == 0 {
		return
	}
	slot := uint32(id)
	u.ids[slot] = nil
	u.freeIDs = append(u.freeIDs, slot)
	n.id.Store(0)
}

// file returns the open file behind handle fh, or nil.
func (k *kernelFS) file(fh uint64) *file {
	k.filesMu.Lock()
	f := k.files[fh]
	k.filesMu.Unlock()
	return f
}

func (k *kernelFS) addFile(f *file) uint64 {
	k.filesMu.Lock()
	defer k.filesMu.Unlock()
	k.lastFh++
	k.files[k.lastFh] = f
	return k.lastFh
}

func (k *kernelFS) takeFile(fh uint64) *file {
	k.filesMu.Lock()
	defer k.filesMu.Unlock()
	f := k.files[fh]
	delete(k.files, fh)
	return f
}

// fillEntry completes the reply of a request that handed child to the
// kernel (its reference is already counted).
func fillEntry(child *node, out *fuse.EntryOut) {
	// The reference this reply carries keeps the id; the load is atomic
	// because a FORGET of it, though it comes after the reply, is not
	// ordered with this read by anything in the process.
	id := child.id.Load()
	out.NodeId = id
	out.Generation = id >> 32
	out.Attr.Ino = child.ino
	out.Attr.Mode = child.kind | out.Attr.Mode&07777
	out.SetEntryTimeout(cacheTimeout) // the attributes' is the node's (attrValidity)
}

// ref counts one more kernel reference to n, for a node the kernel
// already holds (LINK's target) or that was just made. Caller holds
// u.nodesMu.
//
// The count saturates: a file looked up four billion times without being
// forgotten keeps its node for the mount's life. It cannot reach zero
// early, since a FORGET never gives back more than the kernel counted.
func (u *union) refLocked(n *node) {
	if n.kref == 0 {
		u.newIDLocked(n)
	}
	if n.kref < math.MaxUint32 {
		n.kref++
	}
}

func (u *union) ref(n *node) {
	u.nodesMu.Lock()
	u.refLocked(n)
	u.nodesMu.Unlock()
}

var staleStatus = fuse.Status(syscall.ESTALE)

func status(errno syscall.Errno) fuse.Status { return fuse.Status(errno) }

func (k *kernelFS) Lookup(cancel <-chan struct{}, in *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	parent := k.node(in.NodeId)
	if parent == nil || name == "." || name == ".." {
		// The kernel resolves dots itself; it asks for them only to
		// reconnect an exported file handle, which strata does not
		// offer. A lookup of ".." in the root would reach the parent
		// of a layer.
		return staleStatus
	}
	child, errno := parent.Lookup(ctxOf(in, cancel), name, out)
	if errno == syscall.ENOENT {
		// A negative entry the kernel may cache for as long as a
		// positive one: every change of names goes through the mount.
		*out = fuse.EntryOut{}
		out.SetEntryTimeout(cacheTimeout)
		return fuse.OK
	}
	if errno != 0 {
		return status(errno)
	}
	fillEntry(child, out)
	return fuse.OK
}

// Forget gives back nlookup references; a node the kernel no longer holds
// leaves the tables and lets go of its descriptors.
func (k *kernelFS) Forget(id, nlookup uint64) {
	u := k.u
	u.nodesMu.Lock()
	n := u.nodeByIDLocked(id)
	if n == nil || n == k.root {
		u.nodesMu.Unlock()
		return
	}
	if nlookup < uint64(n.kref) {
		n.kref -= uint32(nlookup)
		u.nodesMu.Unlock()
		return
	}
	n.kref = 0
	u.forgetLocked(n)
	u.nodesMu.Unlock()
	k.dirs.forget(id)
	k.forgotten(1 + uint64(n.release()))
}

// forgetBurst is how much forgotten state, in nodes and listed names,
// makes the daemon collect its garbage and return it to the system at once
// (about 5 MiB).
const forgetBurst = 1 << 16

// forgotten counts the nodes and listed names freed with a node the kernel
// forgot. The kernel forgets in bursts (memory pressure, drop_caches, an
// unmount of a big tree), and serving FORGET allocates nothing, so without
// a nudge the garbage would wait for the next collection that some later
// request's allocations bring, or for the daemon's periodic return of
// memory, before the RSS shrinks.
func (k *kernelFS) forgotten(weight uint64) {
	after := k.forgets.Add(weight)
	if (after-weight)/forgetBurst == after/forgetBurst || !k.collecting.CompareAndSwap(false, true) {
		return
	}
	// Collect again while the burst goes on, so its tail is returned
	// too, not only what was forgotten when it crossed the mark.
	go func() {
		defer k.collecting.Store(false)
		for {
			before := k.forgets.Load()
			debug.FreeOSMemory()
			if k.forgets.Load()-before < forgetBurst/4 {
				return
			}
		}
	}()
}

func (k *kernelFS) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	n := k.node(in.NodeId)
	if n == nil {
		return staleStatus
	}
	var f *file
	if in.Flags()&fuse.FUSE_GETATTR_FH != 0 {
		f = k.file(in.Fh())
	}
	return status(n.Getattr(ctxOf(&in.InHeader, cancel), f, out))
}

func (k *kernelFS) SetAttr(cancel <-chan struct{}, in *fuse.SetAttrIn, out *fuse.AttrOut) fuse.Status {
	n := k.node(in.NodeId)
	if n == nil {
		return staleStatus
	}
	var f *file
	if fh, ok := in.GetFh(); ok {
		f = k.file(fh)
	}
	errno := n.Setattr(ctxOf(&in.InHeader, cancel), f, in, out)
	out.Mode = n.kind | out.Mode&07777
	return status(errno)
}

// entryReply finishes a request that made a name: the new node goes to
// the kernel with its reference counted, and listings are stale.
func (k *kernelFS) entryReply(child *node, errno syscall.Errno, out *fuse.EntryOut) fuse.Status {
	k.dirs.changed()
	if errno != 0 {
		return status(errno)
	}
	fillEntry(child, out)
	return fuse.OK
}

func (k *kernelFS) Mknod(cancel <-chan struct{}, in *fuse.MknodIn, name string, out *fuse.EntryOut) fuse.Status {
	n := k.node(in.NodeId)
	if n == nil {
		return staleStatus
	}
	child, errno := n.Mknod(ctxOf(&in.InHeader, cancel), name, in.Mode, in.Rdev, out)
	return k.entryReply(child, errno, out)
}

func (k *kernelFS) Mkdir(cancel <-chan struct{}, in *fuse.MkdirIn, name string, out *fuse.EntryOut) fuse.Status {
	n := k.node(in.NodeId)
	if n == nil {
		return staleStatus
	}
	child, errno := n.Mkdir(ctxOf(&in.InHeader, cancel), name, in.Mode, out)
	return k.entryReply(child, errno, out)
}

func (k *kernelFS) Symlink(cancel <-chan struct{}, in *fuse.InHeader, target, name string, out *fuse.EntryOut) fuse.Status {
	n := k.node(in.NodeId)
	if n == nil {
		return staleStatus
	}
	child, errno := n.Symlink(ctxOf(in, cancel), target, name, out)
	return k.entryReply(child, errno, out)
}

func (k *kernelFS) Link(cancel <-chan struct{}, in *fuse.LinkIn, name string, out *fuse.EntryOut) fuse.Status {
	n, target := k.node(in.NodeId), k.node(in.Oldnodeid)
	if n == nil || target == nil {
		return staleStatus
	}
	child, errno := n.Link(ctxOf(&in.InHeader, cancel), target, name, out)
	if errno == 0 {
		k.u.ref(child)
	}
	return k.entryReply(child, errno, out)
}

func (k *kernelFS) Unlink(cancel <-chan struct{}, in *fuse.InHeader, name string) fuse.Status {
	n := k.node(in.NodeId)
	if n == nil {
		return staleStatus
	}
	defer k.dirs.changed()
	return status(n.Unlink(ctxOf(in, cancel), name))
}

func (k *kernelFS) Rmdir(cancel <-chan struct{}, in *fuse.InHeader, name string) fuse.Status {
	n := k.node(in.NodeId)
	if n == nil {
		return staleStatus
	}
	defer k.dirs.changed()
	return status(n.Rmdir(ctxOf(in, cancel), name))
}

func (k *kernelFS) Rename(cancel <-chan struct{}, in *fuse.RenameIn, oldName, newName string) fuse.Status {
	n, np := k.node(in.NodeId), k.node(in.Newdir)
	if n == nil || np == nil {
		return staleStatus
	}
	defer k.dirs.changed()
	return status(n.Rename(ctxOf(&in.InHeader, cancel), oldName, np, newName, in.Flags))
}

func (k *kernelFS) Readlink(cancel <-chan struct{}, in *fuse.InHeader) ([]byte, fuse.Status) {
	n := k.node(in.NodeId)
	if n == nil {
		return nil, staleStatus
	}
	target, errno := n.Readlink(ctxOf(in, cancel))
	return target, status(errno)
}

// Access checks the mode bits as the kernel would for a mount without
// default_permissions: only access(2) and friends ask.
func (k *kernelFS) Access(cancel <-chan struct{}, in *fuse.AccessIn) fuse.Status {
	n := k.node(in.NodeId)
	if n == nil {
		return staleStatus
	}
	var out fuse.AttrOut
	if errno := n.Getattr(ctxOf(&in.InHeader, cancel), nil, &out); errno != 0 {
		return status(errno)
	}
	inGroup := func(gid uint32) bool { return inSupplementaryGroup(in.Caller.Pid, gid) }
	if !mayAccess(&in.Caller, &out.Attr, in.Mask, inGroup) {
		return fuse.EACCES
	}
	return fuse.OK
}

// mayAccess applies the owner, group and other bits to mask (R_OK, W_OK,
// X_OK). Root passes every check but execute, which needs some x bit on a
// file, as generic_permission has it. The group bits apply to a caller in
// the file's group, its primary one or one of the others; inGroup answers
// for the others, and is asked only when the group and other bits give
// different answers.
func mayAccess(c *fuse.Caller, a *fuse.Attr, mask uint32, inGroup func(gid uint32) bool) bool {
	mask &= 7
	if c.Uid == 0 {
		return mask&1 == 0 || a.Mode&unix.S_IFMT == unix.S_IFDIR || a.Mode&0o111 != 0
	}
	owner, group, other := a.Mode>>6&7, a.Mode>>3&7, a.Mode&7
	switch {
	case c.Uid == a.Uid:
		return owner&mask == mask
	case c.Gid == a.Gid:
		return group&mask == mask
	case group&mask != other&mask && inGroup(a.Gid):
		return group&mask == mask
	}
	return other&mask == mask
}

func (k *kernelFS) GetXAttr(cancel <-chan struct{}, in *fuse.InHeader, attr string, dest []byte) (uint32, fuse.Status) {
	n := k.node(in.NodeId)
	if n == nil {
		return 0, staleStatus
	}
	sz, errno := n.Getxattr(ctxOf(in, cancel), attr, dest)
	return sz, status(errno)
}

func (k *kernelFS) ListXAttr(cancel <-chan struct{}, in *fuse.InHeader, dest []byte) (uint32, fuse.Status) {
	n := k.node(in.NodeId)
	if n == nil {
		return 0, staleStatus
	}
	sz, errno := n.Listxattr(ctxOf(in, cancel), dest)
	return sz, status(errno)
}

func (k *kernelFS) SetXAttr(cancel <-chan struct{}, in *fuse.SetXAttrIn, attr string, data []byte) fuse.Status {
	n := k.node(in.NodeId)
	if n == nil {
		return staleStatus
	}
	return status(n.Setxattr(ctxOf(&in.InHeader, cancel), attr, data, in.Flags))
}

func (k *kernelFS) RemoveXAttr(cancel <-chan struct{}, in *fuse.InHeader, attr string) fuse.Status {
	n := k.node(in.NodeId)
	if n == nil {
		return staleStatus
	}
	return status(n.Removexattr(ctxOf(in, cancel), attr))
}

func (k *kernelFS) Create(cancel <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	n := k.node(in.NodeId)
	if n == nil {
		return staleStatus
	}
	child, f, errno := n.Create(ctxOf(&in.InHeader, cancel), name, in.Flags, in.Mode, &out.EntryOut)
	st := k.entryReply(child, errno, &out.EntryOut)
	if st.Ok() {
		k.openReply(f, &out.OpenOut)
	}
	return st
}

func (k *kernelFS) Tmpfile(cancel <-chan struct{}, in *fuse.CreateIn, out *fuse.CreateOut) fuse.Status {
	n := k.node(in.NodeId)
	if n == nil {
		return staleStatus
	}
	child, f, errno := n.Tmpfile(ctxOf(&in.InHeader, cancel), in.Flags, in.Mode, &out.EntryOut)
	if errno != 0 {
		return status(errno)
	}
	fillEntry(child, &out.EntryOut)
	k.openReply(f, &out.OpenOut)
	return fuse.OK
}

func (k *kernelFS) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	n := k.node(in.NodeId)
	if n == nil {
		return staleStatus
	}
	f, errno := n.Open(ctxOf(&in.InHeader, cancel), in.Flags)
	if errno != 0 {
		return status(errno)
	}
	k.openReply(f, out)
	return fuse.OK
}

// openReply gives an open file a handle, and a backing file when it is
// passed through.
func (k *kernelFS) openReply(f *file, out *fuse.OpenOut) {
	out.Fh = k.addFile(f)
	if !f.pt {
		return
	}
	if id := f.n.backingID(k.u, f); id != 0 {
		out.BackingID = id
		out.OpenFlags |= fuse.FOPEN_PASSTHROUGH
		out.OpenFlags &^= fuse.FOPEN_KEEP_CACHE
	}
}

func (k *kernelFS) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	f := k.takeFile(in.Fh)
	if f == nil {
		return
	}
	f.Release(ctxOf(&in.InHeader, cancel))
}

// withFile resolves the handle of a request on an open file.
func (k *kernelFS) withFile(fh uint64, fn func(f *file) syscall.Errno) fuse.Status {
	f := k.file(fh)
	if f == nil {
		return fuse.EBADF
	}
	return status(fn(f))
}

func (k *kernelFS) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	f := k.file(in.Fh)
	if f == nil {
		return nil, fuse.EBADF
	}
	res, errno := f.Read(ctxOf(&in.InHeader, cancel), buf, int64(in.Offset))
	return res, status(errno)
}

func (k *kernelFS) Write(cancel <-chan struct{}, in *fuse.WriteIn, data []byte) (uint32, fuse.Status) {
	f := k.file(in.Fh)
	if f == nil {
		return 0, fuse.EBADF
	}
	n, errno := f.Write(ctxOf(&in.InHeader, cancel), data, int64(in.Offset))
	return n, status(errno)
}

func (k *kernelFS) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	return k.withFile(in.Fh, func(f *file) syscall.Errno { return f.Flush(ctxOf(&in.InHeader, cancel)) })
}

func (k *kernelFS) Fsync(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	return k.withFile(in.Fh, func(f *file) syscall.Errno { return f.Fsync(ctxOf(&in.InHeader, cancel), in.FsyncFlags) })
}

func (k *kernelFS) Fallocate(cancel <-chan struct{}, in *fuse.FallocateIn) fuse.Status {
	return k.withFile(in.Fh, func(f *file) syscall.Errno {
		return f.Allocate(ctxOf(&in.InHeader, cancel), in.Offset, in.Length, in.Mode)
	})
}

func (k *kernelFS) Lseek(cancel <-chan struct{}, in *fuse.LseekIn, out *fuse.LseekOut) fuse.Status {
	return k.withFile(in.Fh, func(f *file) syscall.Errno {
		off, errno := f.Lseek(ctxOf(&in.InHeader, cancel), in.Offset, in.Whence)
		out.Offset = off
		return errno
	})
}

func (k *kernelFS) GetLk(cancel <-chan struct{}, in *fuse.LkIn, out *fuse.LkOut) fuse.Status {
	return k.withFile(in.Fh, func(f *file) syscall.Errno {
		return f.Getlk(ctxOf(&in.InHeader, cancel), in.Owner, &in.Lk, in.LkFlags, &out.Lk)
	})
}

func (k *kernelFS) SetLk(cancel <-chan struct{}, in *fuse.LkIn) fuse.Status {
	return k.withFile(in.Fh, func(f *file) syscall.Errno {
		return f.Setlk(ctxOf(&in.InHeader, cancel), in.Owner, &in.Lk, in.LkFlags)
	})
}

func (k *kernelFS) SetLkw(cancel <-chan struct{}, in *fuse.LkIn) fuse.Status {
	return k.withFile(in.Fh, func(f *file) syscall.Errno {
		return f.Setlkw(ctxOf(&in.InHeader, cancel), in.Owner, &in.Lk, in.LkFlags)
	})
}

func (k *kernelFS) CopyFileRange(cancel <-chan struct{}, in *fuse.CopyFileRangeIn) (uint32, fuse.Status) {
	src, dst := k.file(in.FhIn), k.file(in.FhOut)
	if src == nil || dst == nil {
		return 0, fuse.EBADF
	}
	n, errno := copyFileRange(ctxOf(&in.InHeader, cancel), src, in.OffIn, dst, in.OffOut, in.Len, in.Flags)
	return n, status(errno)
}

// Ioctl: the backing files' ioctls are not passed on (overlayfs passes a
// few flag ioctls; nothing strata serves needs them).
func (k *kernelFS) Ioctl(cancel <-chan struct{}, in *fuse.IoctlIn, inbuf []byte, out *fuse.IoctlOut, outbuf []byte) fuse.Status {
	return fuse.Status(syscall.ENOTTY)
}

func (k *kernelFS) StatFs(cancel <-chan struct{}, in *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	return status(k.root.Statfs(ctxOf(in, cancel), out))
}

// OpenDir answers ENOSYS: directories are read without opens (see
// dircursor.go).
func (k *kernelFS) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	return fuse.ENOSYS
}

func (k *kernelFS) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return k.readDir(in, out, false)
}

func (k *kernelFS) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return k.readDir(in, out, true)
}

func (k *kernelFS) readDir(in *fuse.ReadIn, out *fuse.DirEntryList, plus bool) fuse.Status {
	n := k.node(in.NodeId)
	if n == nil {
		return staleStatus
	}
	h, errno := k.dirs.take(n, in.NodeId)
	if errno != 0 {
		return status(errno)
	}
	errno = h.read(in.Offset, out, plus)
	// An error, or nothing added: the end of the listing.
	k.dirs.put(in.NodeId, h, errno != 0 || out.Offset == in.Offset)
	return status(errno)
}

func (k *kernelFS) FsyncDir(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	n := k.node(in.NodeId)
	if n == nil {
		return staleStatus
	}
	return status(n.fsyncDir())
}

// notifyContent tells the kernel to drop what it caches of n's attributes
// and data. It is sent from a goroutine of its own: a notification written
// while the kernel holds locks for the request being served could wait on
// them. Callers may hold u.nodesMu.
func (u *union) notifyContent(n *node) {
	srv, id := u.srv.Load(), n.id.Load()
	if srv == nil || id == 0 {
		return
	}
	go srv.InodeNotify(id, 0, 0)
}

// knownUpperIno reports whether a node shows the upper inode number ino
// as its own. The upper entry with that number is then that node's object
// and shows that number: inode numbers of one filesystem are unique, and
// a copied-up entry's node has its lower object's number instead (spared:
// a getxattr of the recorded number per entry listed).
func (u *union) knownUpperIno(ino uint64) bool {
	u.nodesMu.Lock()
	defer u.nodesMu.Unlock()
	return u.nodes[ino] != nil
}

// unref gives back a reference taken for a reply that failed after all.
func (u *union) unref(n *node) {
	u.nodesMu.Lock()
	if n.kref > 1 {
		n.kref--
		u.nodesMu.Unlock()
		return
	}
	n.kref = 0
	u.forgetLocked(n)
	u.nodesMu.Unlock()
	n.release()
}
