package integration

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"syscall"
	"unicode"

	"golang.org/x/sys/unix"
)

// op is one operation applied by plain syscalls to a path inside a mount.
// It is plain data (JSON-encodable), so a random sequence can be printed
// and an op can be handed to a child process that runs it as another user.
// Paths are relative to the mount root ("" is the root); every call is made
// relative to a descriptor of the root, so paths near PATH_MAX work.
type op struct {
	Kind  string `json:"kind"`
	Path  string `json:"path,omitempty"`
	Path2 string `json:"path2,omitempty"`
	Data  string `json:"data,omitempty"`
	Off   int64  `json:"off,omitempty"`
	Off2  int64  `json:"off2,omitempty"`
	Len   int64  `json:"len,omitempty"`
	Flags int    `json:"flags,omitempty"`
	Mode  uint32 `json:"mode,omitempty"`
	UID   int    `json:"uid,omitempty"`
	GID   int    `json:"gid,omitempty"`
	Name  string `json:"name,omitempty"` // xattr name, or a second name
	Sec   int64  `json:"sec,omitempty"`
	Nsec  int64  `json:"nsec,omitempty"`
	// AsUID, when non-zero, runs the op in a child process whose uid and
	// gid are AsUID (for semantics that differ for non-root callers).
	AsUID int `json:"as_uid,omitempty"`
}

func (o op) String() string {
	b, _ := json.Marshal(o)
	return string(b)
}

// opResult is what an op returned: its error (an errno name such as
// "ENOENT", or "" for success) and an observation (data read, a listing),
// which must be independent of the target (no inode numbers, no times
// that the op did not set).
type opResult struct {
	Err string `json:"err"`
	Obs string `json:"obs"`
}

func (r opResult) String() string {
	e := r.Err
	if e == "" {
		e = "ok"
	}
	if r.Obs == "" {
		return e
	}
	return e + " " + r.Obs
}

// opFunc runs one kind of op; root is an O_PATH descriptor of the mount root.
type opFunc func(root int, o op) (obs string, err error)

// opKinds maps op.Kind to its implementation. To add an op: write a small
// opFunc, register it here, add a constructor below, and (if it should be
// fuzzed) add it to the random generator in random_test.go.
var opKinds map[string]opFunc

func init() {
	opKinds = map[string]opFunc{
		"open":               doOpen,
		"write":              doWrite,
		"append":             doAppend,
		"read":               doRead,
		"truncate":           doTruncate,
		"mkdir":              doMkdir,
		"mknod":              doMknod,
		"symlink":            doSymlink,
		"readlink":           doReadlink,
		"link":               doLink,
		"unlink":             doUnlink,
		"rmdir":              doRmdir,
		"rename":             doRename,
		"chmod":              doChmod,
		"chown":              doChown,
		"utimens":            doUtimens,
		"setxattr":           doSetxattr,
		"getxattr":           doGetxattr,
		"listxattr":          doListxattr,
		"removexattr":        doRemovexattr,
		"stat":               doStat,
		"statfs":             doStatfs,
		"readdir":            doReaddir,
		"readdir-changing":   doReaddirChanging,
		"seekmap":            doSeekMap,
		"fallocate":          doFallocate,
		"copyrange":          doCopyRange,
		"mmapwrite":          doMmapWrite,
		"fsync":              doFsync,
		"locks":              doLocks,
		"tmpfile":            doTmpfile,
		"open-unlinked":      doOpenUnlinked,
		"open-renamed":       doOpenRenamed,
		"read-before-copyup": doReadBeforeCopyUp,
		"concurrent-write":   doConcurrentWrite,
		"concurrent-ns":      doConcurrentNamespace,
	}
}

// Constructors, so cases read like a script.

func opCreate(path string, perm uint32) op {
	return op{Kind: "open", Path: path, Flags: unix.O_CREAT | unix.O_WRONLY, Mode: perm}
}
func opOpen(path string, flags int, perm uint32) op {
	return op{Kind: "open", Path: path, Flags: flags, Mode: perm}
}
func opWrite(path string, off int64, data string) op {
	return op{Kind: "write", Path: path, Off: off, Data: data}
}
func opAppend(path, data string) op         { return op{Kind: "append", Path: path, Data: data} }
func opRead(path string) op                 { return op{Kind: "read", Path: path} }
func opTruncate(path string, size int64) op { return op{Kind: "truncate", Path: path, Len: size} }
func opMkdir(path string, perm uint32) op   { return op{Kind: "mkdir", Path: path, Mode: perm} }

// opMknod makes a node; typ is unix.S_IFIFO, S_IFCHR, S_IFBLK or S_IFSOCK.
func opMknod(path string, typ, perm uint32, major, minor uint32) op {
	return op{Kind: "mknod", Path: path, Mode: typ | perm, Off: int64(unix.Mkdev(major, minor))}
}
func opSymlink(target, path string) op { return op{Kind: "symlink", Path: path, Data: target} }
func opReadlink(path string) op        { return op{Kind: "readlink", Path: path} }
func opLink(existing, path string) op  { return op{Kind: "link", Path: existing, Path2: path} }
func opUnlink(path string) op          { return op{Kind: "unlink", Path: path} }
func opRmdir(path string) op           { return op{Kind: "rmdir", Path: path} }
func opRename(from, to string, flags int) op {
	return op{Kind: "rename", Path: from, Path2: to, Flags: flags}
}
func opChmod(path string, perm uint32) op  { return op{Kind: "chmod", Path: path, Mode: perm} }
func opChown(path string, uid, gid int) op { return op{Kind: "chown", Path: path, UID: uid, GID: gid} }
func opUtimens(path string, sec, nsec int64) op {
	return op{Kind: "utimens", Path: path, Sec: sec, Nsec: nsec}
}
func opSetxattr(path, name, value string, flags int) op {
	return op{Kind: "setxattr", Path: path, Name: name, Data: value, Flags: flags}
}
func opGetxattr(path, name string) op    { return op{Kind: "getxattr", Path: path, Name: name} }
func opListxattr(path string) op         { return op{Kind: "listxattr", Path: path} }
func opRemovexattr(path, name string) op { return op{Kind: "removexattr", Path: path, Name: name} }
func opStat(path string) op              { return op{Kind: "stat", Path: path} }
func opStatfs(path string) op            { return op{Kind: "statfs", Path: path} }
func opReaddir(path string) op           { return op{Kind: "readdir", Path: path} }

// opReaddirChanging reads dir part way, creates newName and removes
// oldName in it, and reads on.
func opReaddirChanging(dir, newName, oldName string) op {
	return op{Kind: "readdir-changing", Path: dir, Path2: newName, Name: oldName}
}
func opSeekMap(path string) op { return op{Kind: "seekmap", Path: path} }
func opFallocate(path string, mode int, off, length int64) op {
	return op{Kind: "fallocate", Path: path, Flags: mode, Off: off, Len: length}
}
func opCopyRange(src string, srcOff int64, dst string, dstOff, length int64) op {
	return op{Kind: "copyrange", Path: src, Off: srcOff, Path2: dst, Off2: dstOff, Len: length}
}

// opMmapWrite writes data at off through a mapping (flags MAP_SHARED or
// MAP_PRIVATE) and then reads the file back.
func opMmapWrite(path string, off int64, data string, flags int) op {
	return op{Kind: "mmapwrite", Path: path, Off: off, Data: data, Flags: flags}
}
func opFsync(path string, data string) op { return op{Kind: "fsync", Path: path, Data: data} }
func opLocks(path string) op              { return op{Kind: "locks", Path: path} }

// opTmpfile opens an O_TMPFILE in dir, writes data, and links it as
// linkAs if that is not "".
func opTmpfile(dir, data, linkAs string) op {
	return op{Kind: "tmpfile", Path: dir, Data: data, Path2: linkAs, Mode: 0o640}
}
func opOpenUnlinked(path, data string) op { return op{Kind: "open-unlinked", Path: path, Data: data} }
func opOpenRenamed(path, to, data string) op {
	return op{Kind: "open-renamed", Path: path, Path2: to, Data: data}
}
func opReadBeforeCopyUp(path, data string) op {
	return op{Kind: "read-before-copyup", Path: path, Data: data}
}
func opConcurrentWrite(path, data string) op {
	return op{Kind: "concurrent-write", Path: path, Data: data}
}
func opConcurrentNamespace(dir string) op { return op{Kind: "concurrent-ns", Path: dir} }

// asUser runs o as uid/gid id in a child process.
func asUser(id int, o op) op {
	o.AsUID = id
	return o
}

// applyOp runs o on the mount at mnt.
func applyOp(mnt string, o op) opResult {
	if o.AsUID != 0 {
		return applyOpAsUser(mnt, o)
	}
	fn, ok := opKinds[o.Kind]
	if !ok {
		panic("unknown op kind " + o.Kind)
	}
	root, err := unix.Open(mnt, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return opResult{Err: errString(err), Obs: "cannot open mount root"}
	}
	defer unix.Close(root)
	obs, err := fn(root, o)
	return opResult{Err: errString(err), Obs: obs}
}

// errString names an errno ("ENOENT"); other errors are spelled out.
func errString(err error) string {
	if err == nil {
		return ""
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		if name := unix.ErrnoName(errno); name != "" {
			return name
		}
		return fmt.Sprintf("errno(%d)", int(errno))
	}
	return err.Error()
}

// rel turns an op path into an *at path: "" is the root itself.
func rel(p string) string {
	if p == "" {
		return "."
	}
	return p
}

// procPath names rel under the directory descriptor root for calls that
// have no *at form (xattrs, truncate, statfs).
func procPath(root int, p string) string {
	return fmt.Sprintf("/proc/self/fd/%d/%s", root, rel(p))
}

// describeContent shows short printable data as is, the rest by size and hash.
func describeContent(b []byte) string {
	printable := len(b) <= 64
	for _, r := range string(b) {
		if !unicode.IsPrint(r) && r != '\n' {
			printable = false
			break
		}
	}
	if printable {
		return fmt.Sprintf("%q", b)
	}
	return fmt.Sprintf("len=%d sha256=%x", len(b), sha256.Sum256(b))
}

// openAt opens p under root. EINTR is retried as Go's os package does: it
// is the test's own signal (the runtime's preemption) interrupting a wait,
// such as overlayfs's copy-up lock, not the filesystem's answer.
func openAt(root int, p string, flags int, perm uint32) (int, error) {
	for {
		fd, err := unix.Openat(root, rel(p), flags|unix.O_CLOEXEC, perm)
		if err != unix.EINTR {
			return fd, err
		}
	}
}

func readAllFd(fd int) ([]byte, error) {
	var out []byte
	buf := make([]byte, 64<<10)
	off := int64(0)
	for {
		n, err := unix.Pread(fd, buf, off)
		if err != nil {
			return out, err
		}
		if n == 0 {
			return out, nil
		}
		out = append(out, buf[:n]...)
		off += int64(n)
	}
}

func readFileAt(root int, p string) ([]byte, error) {
	fd, err := openAt(root, p, unix.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	return readAllFd(fd)
}

func doOpen(root int, o op) (string, error) {
	fd, err := openAt(root, o.Path, o.Flags|unix.O_NONBLOCK, o.Mode)
	if err != nil {
		return "", err
	}
	return "", unix.Close(fd)
}

func writeAndClose(fd int, data []byte, off int64) error {
	_, err := unix.Pwrite(fd, data, off)
	for err == unix.EINTR { // as in openAt
		_, err = unix.Pwrite(fd, data, off)
	}
	if cerr := unix.Close(fd); err == nil {
		err = cerr
	}
	return err
}

func doWrite(root int, o op) (string, error) {
	fd, err := openAt(root, o.Path, unix.O_WRONLY|unix.O_NONBLOCK|o.Flags, 0)
	if err != nil {
		return "", err
	}
	return "", writeAndClose(fd, []byte(o.Data), o.Off)
}

func doAppend(root int, o op) (string, error) {
	fd, err := openAt(root, o.Path, unix.O_WRONLY|unix.O_APPEND|unix.O_NONBLOCK, 0)
	if err != nil {
		return "", err
	}
	_, err = unix.Write(fd, []byte(o.Data))
	if cerr := unix.Close(fd); err == nil {
		err = cerr
	}
	return "", err
}

func doRead(root int, o op) (string, error) {
	data, err := readFileAt(root, o.Path)
	if err != nil {
		return "", err
	}
	return describeContent(data), nil
}

func doTruncate(root int, o op) (string, error) {
	return "", unix.Truncate(procPath(root, o.Path), o.Len)
}

func doMkdir(root int, o op) (string, error) {
	return "", unix.Mkdirat(root, rel(o.Path), o.Mode)
}

func doMknod(root int, o op) (string, error) {
	return "", unix.Mknodat(root, rel(o.Path), o.Mode, int(o.Off))
}

func doSymlink(root int, o op) (string, error) {
	return "", unix.Symlinkat(o.Data, root, rel(o.Path))
}

func doReadlink(root int, o op) (string, error) {
	buf := make([]byte, 8192)
	n, err := unix.Readlinkat(root, rel(o.Path), buf)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%q", buf[:n]), nil
}

func doLink(root int, o op) (string, error) {
	return "", unix.Linkat(root, rel(o.Path), root, rel(o.Path2), 0)
}

func doUnlink(root int, o op) (string, error) { return "", unix.Unlinkat(root, rel(o.Path), 0) }

func doRmdir(root int, o op) (string, error) {
	return "", unix.Unlinkat(root, rel(o.Path), unix.AT_REMOVEDIR)
}

func doRename(root int, o op) (string, error) {
	return "", unix.Renameat2(root, rel(o.Path), root, rel(o.Path2), uint(o.Flags))
}

func doChmod(root int, o op) (string, error) {
	return "", unix.Fchmodat(root, rel(o.Path), o.Mode, 0)
}

func doChown(root int, o op) (string, error) {
	return "", unix.Fchownat(root, rel(o.Path), o.UID, o.GID, unix.AT_SYMLINK_NOFOLLOW)
}

// doUtimens sets atime and mtime to Sec.Nsec without following a symlink.
func doUtimens(root int, o op) (string, error) {
	ts := unix.Timespec{Sec: o.Sec, Nsec: o.Nsec}
	return "", unix.UtimesNanoAt(root, rel(o.Path), []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW)
}

func doSetxattr(root int, o op) (string, error) {
	return "", unix.Lsetxattr(procPath(root, o.Path), o.Name, []byte(o.Data), o.Flags)
}

func doGetxattr(root int, o op) (string, error) {
	v, err := lgetxattrBytes(procPath(root, o.Path), o.Name)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%q", v), nil
}

func doListxattr(root int, o op) (string, error) {
	names, err := listXattrs(procPath(root, o.Path))
	sort.Strings(names)
	return strings.Join(names, ","), err
}

func doRemovexattr(root int, o op) (string, error) {
	return "", unix.Lremovexattr(procPath(root, o.Path), o.Name)
}

func doStat(root int, o op) (string, error) {
	var st unix.Stat_t
	if err := unix.Fstatat(root, rel(o.Path), &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return "", err
	}
	return describeStat(&st), nil
}

// describeStat shows the target-independent part of a stat result: no
// inode or device numbers, no times; no size or link count for a directory
// (they depend on the backing filesystem's layout).
func describeStat(st *unix.Stat_t) string {
	s := fmt.Sprintf("%s mode=%04o uid=%d gid=%d", typeLetter(st.Mode), st.Mode&0o7777, st.Uid, st.Gid)
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		s += fmt.Sprintf(" size=%d nlink=%d", st.Size, st.Nlink)
	}
	if t := st.Mode & unix.S_IFMT; t == unix.S_IFCHR || t == unix.S_IFBLK {
		s += fmt.Sprintf(" rdev=%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	}
	return s
}

func typeLetter(m uint32) string {
	switch m & unix.S_IFMT {
	case unix.S_IFREG:
		return "file"
	case unix.S_IFDIR:
		return "dir"
	case unix.S_IFLNK:
		return "symlink"
	case unix.S_IFIFO:
		return "fifo"
	case unix.S_IFCHR:
		return "chardev"
	case unix.S_IFBLK:
		return "blockdev"
	case unix.S_IFSOCK:
		return "socket"
	}
	return fmt.Sprintf("type(%o)", m&unix.S_IFMT)
}

func doStatfs(root int, o op) (string, error) {
	var s unix.Statfs_t
	if err := unix.Statfs(procPath(root, o.Path), &s); err != nil {
		return "", err
	}
	return fmt.Sprintf("bsize=%d blocks=%d files=%d namelen=%d", s.Bsize, s.Blocks, s.Files, s.Namelen), nil
}

func doSeekMap(root int, o op) (string, error) {
	fd, err := openAt(root, o.Path, unix.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return "", err
	}
	exts, err := dataExtents(fd, st.Size)
	return fmt.Sprintf("size=%d data-per-MiB=%s", st.Size, chunkMap(exts, st.Size)), err
}

// chunkMap shows per MiB of the file whether it holds data ("D") or is all
// hole ("-"). Kernel overlayfs copies up in 1 MiB chunks, so a finer map
// would tell implementations apart that both keep the holes.
func chunkMap(exts []extent, size int64) string {
	const mib = 1 << 20
	var b strings.Builder
	for start := int64(0); start < size; start += mib {
		c := "-"
		for _, x := range exts {
			if x.start < start+mib && x.end > start {
				c = "D"
				break
			}
		}
		b.WriteString(c)
	}
	return b.String()
}

func doFallocate(root int, o op) (string, error) {
	fd, err := openAt(root, o.Path, unix.O_RDWR|unix.O_NONBLOCK, 0)
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	return "", unix.Fallocate(fd, uint32(o.Flags), o.Off, o.Len)
}

func doCopyRange(root int, o op) (string, error) {
	src, err := openAt(root, o.Path, unix.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return "src", err
	}
	defer unix.Close(src)
	dst, err := openAt(root, o.Path2, unix.O_WRONLY|unix.O_CREAT|unix.O_NONBLOCK, 0o644)
	if err != nil {
		return "dst", err
	}
	defer unix.Close(dst)
	inOff, outOff, copied := o.Off, o.Off2, int64(0)
	for copied < o.Len {
		n, err := unix.CopyFileRange(src, &inOff, dst, &outOff, int(o.Len-copied), 0)
		if err != nil {
			return fmt.Sprintf("copied=%d", copied), err
		}
		if n == 0 {
			break
		}
		copied += int64(n)
	}
	return fmt.Sprintf("copied=%d", copied), nil
}

func doMmapWrite(root int, o op) (string, error) {
	fd, err := openAt(root, o.Path, unix.O_RDWR|unix.O_NONBLOCK, 0)
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return "", err
	}
	if st.Size < o.Off+int64(len(o.Data)) || st.Size == 0 {
		return "file too short to map", nil
	}
	mem, err := unix.Mmap(fd, 0, int(st.Size), unix.PROT_READ|unix.PROT_WRITE, o.Flags)
	if err != nil {
		return "", err
	}
	copy(mem[o.Off:], o.Data)
	seen := describeContent(mem)
	if o.Flags&unix.MAP_SHARED != 0 {
		if err := unix.Msync(mem, unix.MS_SYNC); err != nil {
			unix.Munmap(mem)
			return "", err
		}
	}
	if err := unix.Munmap(mem); err != nil {
		return "", err
	}
	after, err := readFileAt(root, o.Path)
	return fmt.Sprintf("mapping=%s file=%s", seen, describeContent(after)), err
}

func doFsync(root int, o op) (string, error) {
	fd, err := openAt(root, o.Path, unix.O_RDWR|unix.O_NONBLOCK, 0)
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	if _, err := unix.Pwrite(fd, []byte(o.Data), 0); err != nil {
		return "write", err
	}
	if err := unix.Fsync(fd); err != nil {
		return "fsync", err
	}
	return "", unix.Fdatasync(fd)
}

// doLocks takes flock and OFD locks through two descriptors of the same
// file and reports which conflicted.
func doLocks(root int, o op) (string, error) {
	fd1, err := openAt(root, o.Path, unix.O_RDWR|unix.O_NONBLOCK, 0)
	if err != nil {
		return "", err
	}
	defer unix.Close(fd1)
	fd2, err := openAt(root, o.Path, unix.O_RDWR|unix.O_NONBLOCK, 0)
	if err != nil {
		return "", err
	}
	defer unix.Close(fd2)
	var steps []string
	step := func(name string, err error) { steps = append(steps, name+"="+orOK(errString(err))) }
	step("flock1", unix.Flock(fd1, unix.LOCK_EX|unix.LOCK_NB))
	step("flock2", unix.Flock(fd2, unix.LOCK_EX|unix.LOCK_NB))
	step("unlock1", unix.Flock(fd1, unix.LOCK_UN))
	step("flock2again", unix.Flock(fd2, unix.LOCK_EX|unix.LOCK_NB))
	wr := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: 0, Len: 10}
	step("ofd1", unix.FcntlFlock(uintptr(fd1), unix.F_OFD_SETLK, &wr))
	wr2 := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: 5, Len: 10}
	step("ofd2", unix.FcntlFlock(uintptr(fd2), unix.F_OFD_SETLK, &wr2))
	probe := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: 0, Len: 1}
	err = unix.FcntlFlock(uintptr(fd2), unix.F_OFD_GETLK, &probe)
	steps = append(steps, fmt.Sprintf("getlk=%s/type%d/start%d/len%d", orOK(errString(err)), probe.Type, probe.Start, probe.Len))
	posix := unix.Flock_t{Type: unix.F_RDLCK, Whence: 0, Start: 20, Len: 5}
	step("posix", unix.FcntlFlock(uintptr(fd1), unix.F_SETLK, &posix))
	return strings.Join(steps, " "), nil
}

func orOK(s string) string {
	if s == "" {
		return "ok"
	}
	return s
}

func doTmpfile(root int, o op) (string, error) {
	fd, err := openAt(root, o.Path, unix.O_TMPFILE|unix.O_RDWR, o.Mode)
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	if _, err := unix.Write(fd, []byte(o.Data)); err != nil {
		return "write", err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return "fstat", err
	}
	obs := fmt.Sprintf("nlink=%d mode=%04o size=%d", st.Nlink, st.Mode&0o7777, st.Size)
	if o.Path2 == "" {
		return obs, nil
	}
	err = unix.Linkat(fd, "", root, rel(o.Path2), unix.AT_EMPTY_PATH)
	return obs + " link=" + orOK(errString(err)), nil
}

// doOpenUnlinked opens Path, unlinks it, then writes Data and reads the
// whole file through the open descriptor.
func doOpenUnlinked(root int, o op) (string, error) {
	fd, err := openAt(root, o.Path, unix.O_RDWR|unix.O_NONBLOCK, 0)
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	if err := unix.Unlinkat(root, rel(o.Path), 0); err != nil {
		return "unlink", err
	}
	return observeOpenFile(fd, o.Data)
}

// doOpenRenamed opens Path, renames it to Path2, writes Data through the
// descriptor and reads the file through the new name.
func doOpenRenamed(root int, o op) (string, error) {
	fd, err := openAt(root, o.Path, unix.O_RDWR|unix.O_NONBLOCK, 0)
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	if err := unix.Renameat(root, rel(o.Path), root, rel(o.Path2)); err != nil {
		return "rename", err
	}
	obs, err := observeOpenFile(fd, o.Data)
	if err != nil {
		return obs, err
	}
	byName, err := readFileAt(root, o.Path2)
	return obs + " by-new-name=" + describeContent(byName), err
}

func observeOpenFile(fd int, data string) (string, error) {
	if _, err := unix.Pwrite(fd, []byte(data), 0); err != nil {
		return "pwrite", err
	}
	content, err := readAllFd(fd)
	if err != nil {
		return "read", err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return "fstat", err
	}
	return fmt.Sprintf("fstat-nlink=%d content=%s", st.Nlink, describeContent(content)), nil
}

// doReadBeforeCopyUp opens Path read-only, then writes Data through a
// second (write) open, which copies a lower file up, and reports what the
// first descriptor and a new open read.
func doReadBeforeCopyUp(root int, o op) (string, error) {
	ro, err := openAt(root, o.Path, unix.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return "", err
	}
	defer unix.Close(ro)
	wr, err := openAt(root, o.Path, unix.O_WRONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return "open for write", err
	}
	if err := writeAndClose(wr, []byte(o.Data), 0); err != nil {
		return "write", err
	}
	// What the old descriptor reads is not compared: kernel overlayfs
	// (since 4.19) moves open files to the copy, strata keeps them on the
	// lower file, by design. cmd/strata's
	// TestOldOpenKeepsLowerContent checks strata's side.
	if _, err := readAllFd(ro); err != nil {
		return "read old fd", err
	}
	fresh, err := readFileAt(root, o.Path)
	return fmt.Sprintf("new-open=%s", describeContent(fresh)), err
}

// doConcurrentWrite has two goroutines open Path for writing at the same
// time and write Data at two different offsets; both writes must land
// (one copy-up, not two racing ones).
func doConcurrentWrite(root int, o op) (string, error) {
	start := make(chan struct{})
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			fd, err := openAt(root, o.Path, unix.O_WRONLY|unix.O_NONBLOCK, 0)
			if err != nil {
				errs[i] = err
				return
			}
			errs[i] = writeAndClose(fd, []byte(fmt.Sprintf("%s%d", o.Data, i)), int64(i*4096))
		}()
	}
	close(start)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return "", err
	}
	data, err := readFileAt(root, o.Path)
	return describeContent(data), err
}

// doConcurrentNamespace runs four goroutines, each making, renaming and
// removing names in its own subdirectory of Path at the same time.
func doConcurrentNamespace(root int, o op) (string, error) {
	const workers, rounds = 4, 25
	counts := make([]map[string]int, workers)
	var wg sync.WaitGroup
	for w := range workers {
		counts[w] = map[string]int{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := fmt.Sprintf("%s/c%d", rel(o.Path), w)
			note := func(err error) { counts[w][orOK(errString(err))]++ }
			note(unix.Mkdirat(root, d, 0o755))
			for r := range rounds {
				note(unix.Mknodat(root, fmt.Sprintf("%s/p%d", d, r), unix.S_IFIFO|0o644, 0))
				fd, err := openAt(root, fmt.Sprintf("%s/f%d", d, r), unix.O_CREAT|unix.O_WRONLY, 0o644)
				note(err)
				if err == nil {
					note(writeAndClose(fd, []byte("x"), 0))
				}
				note(unix.Renameat(root, fmt.Sprintf("%s/f%d", d, r), root, fmt.Sprintf("%s/g%d", d, r)))
				if r%2 == 0 {
					note(unix.Unlinkat(root, fmt.Sprintf("%s/p%d", d, r), 0))
				}
			}
		}()
	}
	wg.Wait()
	total := map[string]int{}
	for _, c := range counts {
		for k, v := range c {
			total[k] += v
		}
	}
	keys := make([]string, 0, len(total))
	for k := range total {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%d", k, total[k]))
	}
	return strings.Join(parts, " "), nil
}

// Running an op as another user: the test binary re-executes itself as a
// helper (see TestMain). The helper starts as root, opens the mount root,
// then drops to the wanted uid/gid, so it can reach a mount under 0700
// test directories the way a process inside a container would.

const helperEnv = "STRATA_IT_HELPER_OP"

func isHelperProcess() bool { return os.Getenv(helperEnv) != "" }

type helperRequest struct {
	Mnt string `json:"mnt"`
	Op  op     `json:"op"`
}

func applyOpAsUser(mnt string, o op) opResult {
	req, _ := json.Marshal(helperRequest{Mnt: mnt, Op: o})
	self, err := os.Executable()
	if err != nil {
		return opResult{Err: err.Error()}
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), helperEnv+"="+string(req))
	out, err := cmd.Output()
	if err != nil {
		return opResult{Err: fmt.Sprintf("helper: %v: %s", err, out)}
	}
	var res opResult
	if err := json.Unmarshal(out, &res); err != nil {
		return opResult{Err: fmt.Sprintf("helper output %q: %v", out, err)}
	}
	return res
}

func runHelperProcess() int {
	var req helperRequest
	if err := json.Unmarshal([]byte(os.Getenv(helperEnv)), &req); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	root, err := unix.Open(req.Mnt, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	id := req.Op.AsUID
	if err := dropPrivileges(id); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	fn := opKinds[req.Op.Kind]
	obs, err := fn(root, req.Op)
	out, _ := json.Marshal(opResult{Err: errString(err), Obs: obs})
	os.Stdout.Write(out)
	return 0
}

func dropPrivileges(id int) error {
	if err := unix.Setgroups(nil); err != nil {
		return fmt.Errorf("setgroups: %w", err)
	}
	if err := unix.Setresgid(id, id, id); err != nil {
		return fmt.Errorf("setresgid: %w", err)
	}
	if err := unix.Setresuid(id, id, id); err != nil {
		return fmt.Errorf("setresuid: %w", err)
	}
	return nil
}
