package fuseloop

import (
	"bytes"
	"encoding/binary"
	"log"
	"os"
	"syscall"
	"testing"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// recordingFS records the arguments it is called with.
type recordingFS struct {
	fuse.RawFileSystem
	rename   fuse.RenameIn
	names    []string
	xattr    string
	value    []byte
	forgets  [][2]uint64
	xattrLen uint32
}

func (f *recordingFS) Rename(cancel <-chan struct{}, in *fuse.RenameIn, oldName, newName string) fuse.Status {
	f.rename = *in
	f.names = []string{oldName, newName}
	return fuse.OK
}

func (f *recordingFS) SetXAttr(cancel <-chan struct{}, in *fuse.SetXAttrIn, attr string, data []byte) fuse.Status {
	f.xattr, f.value = attr, append([]byte(nil), data...)
	return fuse.OK
}

func (f *recordingFS) GetXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string, dest []byte) (uint32, fuse.Status) {
	if len(dest) < int(f.xattrLen) {
		return f.xattrLen, fuse.ERANGE
	}
	return f.xattrLen, fuse.OK
}

func (f *recordingFS) Forget(nodeID, nlookup uint64) {
	f.forgets = append(f.forgets, [2]uint64{nodeID, nlookup})
}

// wire serves single requests on one end of a socket pair (one message per
// writev, like /dev/fuse) and reads the replies on the other.
type wire struct {
	t     *testing.T
	loop  *Loop
	peer  int
	fs    *recordingFS
	req   *request // reused, as a reader goroutine does
	reqID uint64
}

func newWire(t *testing.T) *wire {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
	if err := unix.SetNonblock(fds[1], true); err != nil {
		t.Fatal(err)
	}
	fs := &recordingFS{RawFileSystem: fuse.NewDefaultRawFileSystem()}
	l := &Loop{fd: fds[0], fs: fs, opts: Options{Logger: log.New(os.Stderr, "", 0)}, bufSize: 4096}
	l.buffers.New = func() any { b := make([]byte, l.bufSize); return &b }
	return &wire{t: t, loop: l, peer: fds[1], fs: fs, req: &request{loop: l}}
}

// send serves one request made of a header for opcode, the fixed
// arguments and the trailing bytes, and returns the reply (nil if none).
func (w *wire) send(opcode uint32, body, tail []byte) []byte {
	w.reqID += 2
	hdr := fuse.InHeader{Opcode: opcode, Unique: w.reqID, NodeId: 1}
	hdr.Length = uint32(headerSize + len(body) + len(tail))
	var req bytes.Buffer
	req.Write(unsafe.Slice((*byte)(unsafe.Pointer(&hdr)), headerSize))
	req.Write(body)
	req.Write(tail)
	w.loop.handle(w.loop.decode(req.Bytes(), w.req), w.req)
	buf := make([]byte, 4096)
	n, err := unix.Read(w.peer, buf)
	if err == unix.EAGAIN {
		return nil
	}
	if err != nil {
		w.t.Fatal(err)
	}
	return buf[:n]
}

// status returns a reply's errno (0 for success) and checks its unique.
func (w *wire) status(reply []byte) syscall.Errno {
	w.t.Helper()
	if len(reply) < 16 {
		w.t.Fatalf("reply of %d bytes", len(reply))
	}
	if got := binary.LittleEndian.Uint64(reply[8:]); got != w.reqID {
		w.t.Errorf("reply unique %d, want %d", got, w.reqID)
	}
	if got := binary.LittleEndian.Uint32(reply[0:]); int(got) != len(reply) {
		w.t.Errorf("reply length field %d, message %d bytes", got, len(reply))
	}
	return syscall.Errno(-int32(binary.LittleEndian.Uint32(reply[4:])))
}

func u32s(vs ...uint32) []byte {
	b := make([]byte, 4*len(vs))
	for i, v := range vs {
		binary.LittleEndian.PutUint32(b[4*i:], v)
	}
	return b
}

func u64s(vs ...uint64) []byte {
	b := make([]byte, 8*len(vs))
	for i, v := range vs {
		binary.LittleEndian.PutUint64(b[8*i:], v)
	}
	return b
}

// RENAME's argument is only the new parent; the names follow at once and
// must not be read as RENAME2's flags, nor may a RENAME2 served before
// leave its flags behind.
func TestRenameArgumentsBySize(t *testing.T) {
	w := newWire(t)
	body := append(u64s(9), u32s(unix.RENAME_EXCHANGE, 0)...)
	if st := w.status(w.send(opRename2, body, []byte("a\x00b\x00"))); st != 0 {
		t.Fatalf("RENAME2: %v", st)
	}
	if w.fs.rename.Newdir != 9 || w.fs.rename.Flags != unix.RENAME_EXCHANGE || w.fs.names[0] != "a" || w.fs.names[1] != "b" {
		t.Errorf("RENAME2 decoded as newdir %d flags %#x names %q", w.fs.rename.Newdir, w.fs.rename.Flags, w.fs.names)
	}
	if st := w.status(w.send(opRename, u64s(7), []byte("old\x00new\x00"))); st != 0 {
		t.Fatalf("RENAME: %v", st)
	}
	if w.fs.rename.Newdir != 7 || w.fs.rename.Flags != 0 || w.fs.names[0] != "old" || w.fs.names[1] != "new" {
		t.Errorf("RENAME decoded as newdir %d flags %#x names %q", w.fs.rename.Newdir, w.fs.rename.Flags, w.fs.names)
	}
}

func TestXattrArguments(t *testing.T) {
	w := newWire(t)
	if st := w.status(w.send(opSetxattr, u32s(3, 0), []byte("user.k\x00v\x00z"))); st != 0 {
		t.Fatalf("SETXATTR: %v", st)
	}
	if w.fs.xattr != "user.k" || string(w.fs.value) != "v\x00z" {
		t.Errorf("SETXATTR decoded as %q = %q", w.fs.xattr, w.fs.value)
	}
	// Size 0 asks for the value's size: an answer, not ERANGE.
	w.fs.xattrLen = 42
	reply := w.send(opGetxattr, u32s(0, 0), []byte("user.k\x00"))
	if st := w.status(reply); st != 0 || len(reply) != 16+8 || binary.LittleEndian.Uint32(reply[16:]) != 42 {
		t.Errorf("GETXATTR of size 0: %v, %d bytes %x", st, len(reply), reply)
	}
	// A buffer too small is ERANGE.
	if st := w.status(w.send(opGetxattr, u32s(10, 0), []byte("user.k\x00"))); st != syscall.ERANGE {
		t.Errorf("GETXATTR into 10 bytes: %v, want ERANGE", st)
	}
	// A full buffer gets exactly the value's bytes.
	reply = w.send(opGetxattr, u32s(100, 0), []byte("user.k\x00"))
	if st := w.status(reply); st != 0 || len(reply) != 16+42 {
		t.Errorf("GETXATTR into 100 bytes: %v, %d bytes", st, len(reply))
	}
}

func TestRepliesWithoutHandlers(t *testing.T) {
	w := newWire(t)
	// INTERRUPT: ENOSYS turns interrupts off for the connection.
	if st := w.status(w.send(opInterrupt, u64s(5), nil)); st != syscall.ENOSYS {
		t.Errorf("INTERRUPT: %v, want ENOSYS", st)
	}
	if st := w.status(w.send(99, nil, nil)); st != syscall.ENOSYS {
		t.Errorf("unknown opcode: %v, want ENOSYS", st)
	}
	// A name without its NUL is malformed.
	if st := w.status(w.send(opLookup, nil, []byte("x"))); st != syscall.EINVAL {
		t.Errorf("LOOKUP without NUL: %v, want EINVAL", st)
	}
	// A request shorter than its fixed arguments is malformed.
	if st := w.status(w.send(opRead, u64s(1), nil)); st != syscall.EINVAL {
		t.Errorf("short READ: %v, want EINVAL", st)
	}
}

func TestForgetsGetNoReply(t *testing.T) {
	w := newWire(t)
	if reply := w.send(opForget, u64s(3), nil); reply != nil {
		t.Errorf("FORGET answered %x", reply)
	}
	if reply := w.send(opBatchForget, u32s(2, 0), u64s(10, 1, 11, 4)); reply != nil {
		t.Errorf("BATCH_FORGET answered %x", reply)
	}
	want := [][2]uint64{{1, 3}, {10, 1}, {11, 4}}
	if len(w.fs.forgets) != len(want) {
		t.Fatalf("forgets %v, want %v", w.fs.forgets, want)
	}
	for i := range want {
		if w.fs.forgets[i] != want[i] {
			t.Errorf("forgets %v, want %v", w.fs.forgets, want)
		}
	}
}
