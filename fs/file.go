package fs

import (
	"context"
	"fmt"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// openState records how the node's files are handed to the kernel. The
// kernel allows one backing file per inode while passthrough opens are
// live, and no other kind of open beside them (it fails such an open with
// EIO). So a node
// keeps the mode of its first open while any of its handles is open:
// passthrough on the lower file, passthrough on the upper file, or served
// through FUSE. An open that needs another mode meanwhile supersedes the
// node (see handOut); once the last handle is released, the next open
// sets the mode again. Guarded by node.mu.
type openState struct {
	mode ioMode
	// live are the open handles of the upper object: once every name of
	// the node is gone, fchmod, fchown and friends still reach the file
	// through them (the kernel sends those without a handle).
	live map[*file]struct{}
	// backing is the passthrough backing file registered for the node's
	// passthrough handles, 0 if none; backingFd is the descriptor
	// registered, kept open with it; backingRefs counts those handles,
	// and backingUpper says whether it is the upper file. It stays
	// registered after the last handle closes, for the next open (see
	// keepBacking).
	backing      int32
	backingFd    int
	backingRefs  int32
	backingUpper bool
	// backingClean: the registered upper file was seen with no set-id bit
	// and no capability, and nothing since could have given it either
	// (privilegesMayChange), so a lazy open needs no check.
	backingClean bool
}

// maxIdleBackings bounds the backing files a mount keeps registered for
// nodes with no passthrough handle open. Registering one is two ioctls
// (one to register at the open, one to unregister at the release), a
// file the kernel holds and a descriptor the daemon keeps; a file opened
// again and again (grep after an untar, a build reading headers) reuses
// its registration instead, and its read-only opens are lazy (see file).
// A low descriptor limit lowers it (descriptorBudget, dirfd.go).
const maxIdleBackings = 8192

// ioMode is how a node's open files are served.
type ioMode uint8

const (
	ioUnset ioMode = iota
	ioPassthroughLower
	ioPassthroughUpper
	ioFUSE
)

// liveUpperFd returns a descriptor of the upper object kept open for an
// open handle (the registered backing file, or a handle's own), or -1.
// Caller holds n.mu.
func (n *node) liveUpperFd() int {
	o := n.opens
	if o == nil {
		return -1
	}
	if o.backing != 0 && o.backingUpper {
		return o.backingFd
	}
	for f := range o.live {
		if f.upper {
			if fd, err := f.descriptor(); err == nil {
				return fd
			}
		}
	}
	return -1
}

// file is an open regular file: a descriptor of the upper or lower backing
// file. All I/O goes to its descriptor.
//
// A read-only handle passed through on a backing file the node has
// registered already is opened lazily (openLazily): the kernel reads
// through the registration, and most such handles (grep's, a compiler's)
// never ask the daemon for anything but their RELEASE. Its descriptor is
// opened on the first request that needs one (descriptor), from the
// registered descriptor through /proc/self/fd: a new open file description
// (locks belong to one) of the same object, even if it has been renamed or
// removed meanwhile. The handle holds a reference on the registration from
// its open, so that descriptor stays open as long as the handle.
type file struct {
	n *node
	// fdMu guards fd, which is -1 until a lazy handle's descriptor is
	// opened.
	fdMu sync.Mutex
	fd   int
	// lazyFrom and lazyFlags: a lazy handle's registered descriptor and
	// open flags.
	lazyFrom, lazyFlags int
	upper               bool // the upper file (else a lower one, read-only)
	writable            bool // opened for writing
	// mayHoldSetID: the file had set-id bits or a capability when opened
	// for writing, so writes check for bits to drop.
	mayHoldSetID bool
	pt           bool // handed out as passthrough
	// heldBacking: the handle took its reference on the node's backing
	// file when it was opened (a lazy handle).
	heldBacking bool
	// clean: an upper file passed through because it has no set-id bit
	// or capability (see backingClean).
	clean bool
}

// descriptor returns the handle's descriptor, opening a lazy handle's now.
func (f *file) descriptor() (int, error) {
	f.fdMu.Lock()
	defer f.fdMu.Unlock()
	if f.fd < 0 {
		fd, err := unix.Open(procFdPath(f.lazyFrom), f.lazyFlags, 0)
		if err != nil {
			return -1, fmt.Errorf("open handle: %w", err)
		}
		f.fd = fd
	}
	return f.fd, nil
}

// withFd calls fn with the handle's descriptor.
func (f *file) withFd(fn func(fd int) error) syscall.Errno {
	fd, err := f.descriptor()
	if err != nil {
		return toErrno(err)
	}
	return toErrno(fn(fd))
}

// openFlagsKept are the open(2) flags passed on to the backing file. The
// kernel also sends internal bits (FMODE_EXEC for execve, for one), which
// openat2 rightly refuses with EINVAL.
const openFlagsKept = unix.O_ACCMODE | unix.O_APPEND | unix.O_NONBLOCK | unix.O_DIRECT |
	unix.O_LARGEFILE | unix.O_NOATIME | unix.O_SYNC | unix.O_DSYNC | unix.O_TRUNC

const writeAccess = unix.O_WRONLY | unix.O_RDWR

// Open opens the backing file, copying it up first when the open may
// change it. A superseded node answers ESTALE, as at the moment it was
// superseded (handOut): the kernel looks the path up again and opens the
// successor.
func (n *node) Open(ctx context.Context, flags uint32) (*file, syscall.Errno) {
	if n.current() != n {
		return nil, syscall.ESTALE
	}
	if f := n.openLazily(int(flags)); f != nil {
		return f, 0
	}
	f, err := n.open(int(flags))
	if err != nil {
		return nil, toErrno(err)
	}
	if errno := n.handOut(f, true); errno != 0 {
		return nil, errno
	}
	return f, 0
}

func (n *node) open(flags int) (*file, error) {
	wantsUpper := flags&writeAccess != 0 || flags&unix.O_TRUNC != 0
	if wantsUpper {
		if n.u.upper == nil || n.u.cfg.ReadOnly {
			return nil, unix.EROFS
		}
		if err := n.copyUp(ctx0, flags&unix.O_TRUNC == 0); err != nil {
			return nil, err
		}
	}
	n.u.treeMu.RLock()
	defer n.u.treeMu.RUnlock()
	n.mu.Lock()
	defer n.mu.Unlock()
	if wantsUpper {
		n.xattrs.forget()
	}
	openFlags := flags&openFlagsKept | unix.O_NOFOLLOW | unix.O_CLOEXEC
	if n.inUpper && !(n.metacopy && !wantsUpper) {
		fd, err := n.openUpperObject(openFlags)
		if err != nil {
			return nil, fmt.Errorf("open upper: %w", err)
		}
		if flags&unix.O_TRUNC != 0 && n.metacopy {
			n.metacopy = false
			n.hasLower = false
			removexattrAt(fd, "", n.u.overlayNS+"metacopy")
			removexattrAt(fd, "", n.u.overlayNS+"redirect")
		}
		return &file{n: n, fd: fd, upper: true, writable: flags&writeAccess != 0}, nil
	}
	// Read-only open of lower data (a lower file or a metacopy's data).
	fd, err := n.u.lowers[n.lower.layer].open(n.lowerRel(), openFlags&^(unix.O_TRUNC|unix.O_APPEND), 0)
	if err != nil {
		return nil, fmt.Errorf("open lower: %w", err)
	}
	return &file{n: n, fd: fd}, nil
}

// openLazily opens a lazy handle (see file) for a read-only open, when
// the node's registered backing file is the one the open would pass
// through and its mode allows another such handle; else it returns nil.
func (n *node) openLazily(flags int) *file {
	if flags&(writeAccess|unix.O_TRUNC) != 0 || !n.u.passthrough.Load() {
		return nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	o := n.opens
	if o == nil || o.backing == 0 {
		return nil
	}
	upper := n.inUpper && !n.metacopy
	want := ioPassthroughLower
	if upper {
		want = ioPassthroughUpper
	}
	if o.backingUpper != upper || (o.mode != ioUnset && o.mode != want) {
		return nil
	}
	if upper && !o.backingClean {
		if privilegedObject(o.backingFd, n.xattrs) {
			return nil // served through FUSE (servedForPrivileges)
		}
		o.backingClean = true
	}
	// No O_NOFOLLOW: the /proc/self/fd name is a link by design.
	flags = flags&openFlagsKept | unix.O_CLOEXEC
	f := &file{n: n, fd: -1, lazyFrom: o.backingFd, lazyFlags: flags, upper: upper, pt: true, heldBacking: true}
	if o.backingRefs == 0 {
		n.u.idleBackings.Add(-1)
	}
	o.backingRefs++
	o.mode = want
	o.live[f] = struct{}{}
	return f
}

// openUpperObject opens the node's upper object. Caller holds u.treeMu
// shared and n.mu.
func (n *node) openUpperObject(flags int) (int, error) {
	fd := -1
	if done, err := n.withCachedUpperParent(func(dirfd int, name string) error {
		var err error
		fd, err = unix.Openat(dirfd, name, flags, 0)
		return err
	}); done {
		return fd, err
	}
	dirfd, name, err := n.openObject()
	if err != nil {
		return -1, err
	}
	defer unix.Close(dirfd)
	return unix.Openat(dirfd, name, flags, 0)
}

// handOut hands the open file to the kernel, by passthrough where it can.
//
// When an open needs a mode other than the node's (a lower file opened
// before was copied up and is opened again, now on the upper file; or a
// set-id file is opened for writing), this kernel inode cannot serve it.
// The node is then superseded: it leaves the inode table, so the next lookup of any of its
// names makes a new node with the same st_ino and a new node id, which
// the kernel treats as a new inode. The open answers ESTALE, on which the
// kernel looks the path up again (LOOKUP_REVAL) and retries the open on the
// new node. Old handles keep the old kernel inode and keep reading the old
// content, as they do on overlayfs.
func (n *node) handOut(f *file, checkPrivileged bool) syscall.Errno {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.opens == nil {
		n.opens = &openState{live: map[*file]struct{}{}}
	}
	want := ioFUSE
	switch {
	case !n.u.passthrough.Load() || (checkPrivileged && f.servedForPrivileges()):
	case f.upper:
		want = ioPassthroughUpper
		// Checked, or made so by the caller: a new file whose mode has
		// no set-id bit.
		f.clean = true
	default:
		want = ioPassthroughLower
	}
	if n.opens.mode == ioUnset {
		n.opens.mode = want
	}
	if n.opens.mode != want {
		unix.Close(f.fd)
		n.u.supersede(n)
		return syscall.ESTALE
	}
	n.opens.live[f] = struct{}{}
	f.pt = want != ioFUSE
	return 0
}

// backingID returns the backing file id for a passthrough handle of n,
// registering f's descriptor if the node has none yet, or 0 if the kernel
// refuses (passthrough is then off for the mount, and f is served
// through FUSE).
func (n *node) backingID(u *union, f *file) int32 {
	n.mu.Lock()
	defer n.mu.Unlock()
	o := n.opens
	if f.heldBacking {
		return o.backing
	}
	if f.clean && o.backing != 0 && o.backingUpper {
		o.backingClean = true
	}
	if o.backing != 0 && o.backingRefs == 0 {
		u.idleBackings.Add(-1)
		if o.backingUpper != f.upper {
			// Kept from before a copy-up: the data is elsewhere now.
			n.unregisterBackingLocked()
		}
	}
	if o.backing == 0 {
		id, fd, ok := registerBacking(u, f.fd)
		if !ok {
			f.pt = false
			return 0
		}
		o.backing, o.backingFd, o.backingUpper, o.backingClean = id, fd, f.upper, f.clean
	}
	o.backingRefs++
	return o.backing
}

// registerBacking registers the file open at fd as a backing file, through
// an open file description of its own, and returns its id and that
// descriptor (the caller keeps it open as long as the registration, for
// lazy handles to reopen). The kernel keeps the description it is given
// for as long as the registration lives, and the handle's own descriptor
// carries the handle's locks (flock and OFD locks belong to the open file
// description), which must go when the handle is released.
func registerBacking(u *union, fd int) (int32, int, bool) {
	srv := u.srv.Load()
	if srv == nil {
		return 0, -1, false
	}
	own, err := unix.Open(procFdPath(fd), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, -1, false
	}
	id, errno := srv.RegisterBackingFd(&fuse.BackingMap{Fd: int32(own)})
	if errno != 0 {
		unix.Close(own)
		u.passthrough.Store(false)
		return 0, -1, false
	}
	return id, own, true
}

// keepBacking is called when the node's last passthrough handle closed:
// the registration stays for the next open while the mount keeps fewer
// than u.maxIdleBackings idle ones. Caller holds n.mu.
func (n *node) keepBacking() {
	if n.u.idleBackings.Add(1) > n.u.maxIdleBackings {
		n.u.idleBackings.Add(-1)
		n.unregisterBackingLocked()
	}
}

// dropIdleBackingLocked unregisters a backing file kept with no handle
// open, when the node is forgotten (a removed object's goes through
// retireIdleBackingLocked). Caller holds n.mu.
func (n *node) dropIdleBackingLocked() {
	if n.hasIdleBackingLocked() {
		n.u.idleBackings.Add(-1)
		n.unregisterBackingLocked()
	}
}

// retireIdleBackingLocked is dropIdleBackingLocked for a node whose
// object was just removed (st is its last stat): a kept registration
// holds the file, and its space, as an open descriptor would, and is let
// go of through retireBacking, off the request path. Caller holds n.mu.
func (n *node) retireIdleBackingLocked(st *unix.Stat_t) {
	if n.hasIdleBackingLocked() {
		n.u.idleBackings.Add(-1)
		b, _ := n.detachBackingLocked()
		n.u.retireBacking(b, st)
	}
}

// hasIdleBackingLocked reports whether the node keeps a registered
// backing file with no handle open. Caller holds n.mu.
func (n *node) hasIdleBackingLocked() bool {
	o := n.opens
	return o != nil && o.backing != 0 && o.backingRefs == 0
}

// unregisterBackingLocked gives the node's backing file back to the
// kernel. Caller holds n.mu.
func (n *node) unregisterBackingLocked() {
	if b, ok := n.detachBackingLocked(); ok {
		n.u.unregisterBacking(b)
	}
}

// detachBackingLocked takes the node's backing registration off it and
// returns it, if it has one. Caller holds n.mu.
func (n *node) detachBackingLocked() (backingRegistration, bool) {
	o := n.opens
	if o == nil || o.backing == 0 {
		return backingRegistration{}, false
	}
	b := backingRegistration{o.backing, o.backingFd}
	o.backing, o.backingFd, o.backingRefs, o.backingClean = 0, -1, 0, false
	return b, true
}

// privilegesMayChange is called before a change that may give the node's
// object a set-id bit or a capability: its registered backing file is
// checked again at the next lazy open. The change always goes through
// the current node (Setattr and Setxattr forward to it), the only one
// lazy opens are made on.
func (n *node) privilegesMayChange() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.opens != nil {
		n.opens.backingClean = false
	}
}

// servedForPrivileges reports whether f must be served through FUSE
// because its file carries a set-id bit or a file capability: a writer so
// that privileges drop as the writer (writesPrivileged), and a reader of
// the upper file so that readers and writers of such a file share one
// kernel inode. Were the reader passed through, a writer would supersede
// the node, and the two kernel inodes would disagree about the file's
// size: copy_file_range from the reader's descriptor is cut at the size
// its inode last saw. Caller holds f.n.mu.
func (f *file) servedForPrivileges() bool {
	if f.writable {
		return f.writesPrivileged()
	}
	if !f.upper {
		// A lower file's writer opens a copy, which supersedes the
		// node whatever the bits.
		return false
	}
	return privilegedObject(f.fd, f.n.xattrs)
}

// privilegedObject reports whether the file open at fd has a set-id bit
// or a file capability (or cannot be told); xattrs is what the node knows
// of its xattr names.
func privilegedObject(fd int, xattrs xattrNames) bool {
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil || st.Mode&(unix.S_ISUID|unix.S_ISGID) != 0 {
		return true
	}
	if !xattrs.mayHave("security.capability") {
		return false
	}
	_, err := unix.Fgetxattr(fd, "security.capability", nil)
	return err == nil
}

// writesPrivileged reports whether f is open for writing on a file with a
// set-id bit or a file capability. A passthrough write runs with the
// daemon's credentials, under which the backing filesystem keeps a setgid
// bit that the writer's own write must clear; served through FUSE, the
// kernel clears set-id bits and capabilities as the writer, as on any
// filesystem. Such files are rare, so the cost is small.
func (f *file) writesPrivileged() bool {
	if !f.upper || !f.writable {
		return false
	}
	f.mayHoldSetID = true
	var st unix.Stat_t
	if unix.Fstat(f.fd, &st) != nil {
		return true
	}
	if st.Mode&(unix.S_ISUID|unix.S_ISGID) != 0 {
		return true
	}
	_, err := unix.Fgetxattr(f.fd, "security.capability", nil)
	f.mayHoldSetID = err == nil
	return f.mayHoldSetID
}

// killSetIDForWriter drops set-id bits before a write by a caller without
// CAP_FSETID, as a local filesystem does: setuid always, setgid when
// group-executable or the caller is not in the file's group. Under
// HANDLE_KILLPRIV_V2 this is the server's job, and the daemon's own writes
// (as root) would keep the bits. Files with set-id bits are never served by
// passthrough (writesPrivileged), so every such write comes here.
func (f *file) killSetIDForWriter(ctx context.Context) {
	if !f.mayHoldSetID {
		return
	}
	var st unix.Stat_t
	if unix.Fstat(f.fd, &st) != nil || st.Mode&(unix.S_ISUID|unix.S_ISGID) == 0 {
		return
	}
	c, ok := ctx.(*fuse.Context)
	if !ok || c.Caller.Uid == 0 {
		return
	}
	mode := st.Mode &^ unix.S_ISUID
	if st.Mode&unix.S_ISGID != 0 && st.Mode&unix.S_IXGRP == 0 && callerInGroup(c, st.Gid) {
		mode |= unix.S_ISGID
	} else {
		mode &^= unix.S_ISGID
	}
	unix.Fchmod(f.fd, mode&0o7777)
}

func (f *file) Release(ctx context.Context) syscall.Errno {
	f.n.mu.Lock()
	o := f.n.opens
	delete(o.live, f)
	if f.pt {
		o.backingRefs--
		if o.backingRefs == 0 {
			f.n.keepBacking()
		}
	}
	if len(o.live) == 0 {
		// The kernel has let go of every file of the inode (it sends
		// RELEASE after that), so the next open may take another mode.
		o.mode = ioUnset
	}
	f.n.mu.Unlock()
	f.fdMu.Lock()
	defer f.fdMu.Unlock()
	if f.fd < 0 {
		return 0 // a lazy handle never opened
	}
	return toErrno(unix.Close(f.fd))
}

func (f *file) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	n := 0
	if errno := f.withFd(func(fd int) (err error) {
		n, err = unix.Pread(fd, dest, off)
		return err
	}); errno != 0 {
		return nil, errno
	}
	return fuse.ReadResultData(dest[:n]), 0
}

func (f *file) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	if f.upper {
		f.killSetIDForWriter(ctx)
	}
	n, err := unix.Pwrite(f.fd, data, off)
	if err != nil {
		return 0, toErrno(err)
	}
	return uint32(n), 0
}

// Flush answers ENOSYS, on which the kernel stops sending FLUSH for the
// life of the mount: that saves a round trip on every close(2). The backing
// files are local, so close reports nothing that fsync would not, and POSIX
// locks are still released at close: the kernel sends an unlock (Setlk)
// for the closing owner itself.
func (f *file) Flush(ctx context.Context) syscall.Errno {
	return syscall.ENOSYS
}

func (f *file) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	return f.withFd(func(fd int) error {
		if flags&1 != 0 {
			return unix.Fdatasync(fd)
		}
		return unix.Fsync(fd)
	})
}

func (f *file) Lseek(ctx context.Context, off uint64, whence uint32) (uint64, syscall.Errno) {
	var r int64
	errno := f.withFd(func(fd int) (err error) {
		r, err = unix.Seek(fd, int64(off), int(whence))
		return err
	})
	return uint64(r), errno
}

func (f *file) Allocate(ctx context.Context, off uint64, size uint64, mode uint32) syscall.Errno {
	return f.withFd(func(fd int) error { return unix.Fallocate(fd, mode, int64(off), int64(size)) })
}

// Locks are OFD locks on the backing descriptor, keyed by the lock owner the
// kernel passes, so POSIX and flock semantics hold across processes.
func (f *file) Getlk(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32, out *fuse.FileLock) syscall.Errno {
	flk := unix.Flock_t{}
	lk.ToFlockT((*syscall.Flock_t)(unsafeFlock(&flk)))
	if errno := f.withFd(func(fd int) error { return unix.FcntlFlock(uintptr(fd), unix.F_OFD_GETLK, &flk) }); errno != 0 {
		return errno
	}
	out.FromFlockT((*syscall.Flock_t)(unsafeFlock(&flk)))
	return 0
}

func (f *file) Setlk(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32) syscall.Errno {
	return f.setLock(lk, flags, false)
}

func (f *file) Setlkw(ctx context.Context, owner uint64, lk *fuse.FileLock, flags uint32) syscall.Errno {
	return f.setLock(lk, flags, true)
}

func (f *file) setLock(lk *fuse.FileLock, flags uint32, wait bool) syscall.Errno {
	if flags&fuse.FUSE_LK_FLOCK != 0 {
		var op int
		switch lk.Typ {
		case unix.F_RDLCK:
			op = unix.LOCK_SH
		case unix.F_WRLCK:
			op = unix.LOCK_EX
		case unix.F_UNLCK:
			op = unix.LOCK_UN
		default:
			return syscall.EINVAL
		}
		if !wait {
			op |= unix.LOCK_NB
		}
		return f.withFd(func(fd int) error { return unix.Flock(fd, op) })
	}
	flk := unix.Flock_t{}
	lk.ToFlockT((*syscall.Flock_t)(unsafeFlock(&flk)))
	cmd := unix.F_OFD_SETLK
	if wait {
		cmd = unix.F_OFD_SETLKW
	}
	return f.withFd(func(fd int) error { return unix.FcntlFlock(uintptr(fd), cmd, &flk) })
}

// ctx0 is the context for internal work not tied to one request.
var ctx0 = context.Background()

// copyFileRange copies between the backing files directly, so the data
// never passes through the daemon and the backing filesystem applies
// copy_file_range's own rules (overlapping ranges in one file, for one,
// are EINVAL).
func copyFileRange(ctx context.Context, in *file, offIn uint64, dst *file, offOut uint64, length uint64, flags uint64) (uint32, syscall.Errno) {
	// One object may be two kernel inodes here (a superseded node and its
	// successor), so the kernel's own same-file check may not have run.
	if in.n.ino == dst.n.ino && offIn < offOut+length && offOut < offIn+length {
		return 0, syscall.EINVAL
	}
	if dst.upper {
		dst.killSetIDForWriter(ctx)
	}
	inOff, outOff := int64(offIn), int64(offOut)
	inFd, err := in.descriptor()
	if err != nil {
		return 0, toErrno(err)
	}
	copied, err := unix.CopyFileRange(inFd, &inOff, dst.fd, &outOff, int(length), int(flags))
	if err != nil {
		return 0, toErrno(err)
	}
	return uint32(copied), 0
}
