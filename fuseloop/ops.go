package fuseloop

import (
	"bytes"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Opcodes of the kernel's FUSE protocol (include/uapi/linux/fuse.h).
const (
	opLookup        = 1
	opForget        = 2
	opGetattr       = 3
	opSetattr       = 4
	opReadlink      = 5
	opSymlink       = 6
	opMknod         = 8
	opMkdir         = 9
	opUnlink        = 10
	opRmdir         = 11
	opRename        = 12
	opLink          = 13
	opOpen          = 14
	opRead          = 15
	opWrite         = 16
	opStatfs        = 17
	opRelease       = 18
	opFsync         = 20
	opSetxattr      = 21
	opGetxattr      = 22
	opListxattr     = 23
	opRemovexattr   = 24
	opFlush         = 25
	opInit          = 26
	opOpendir       = 27
	opReaddir       = 28
	opReleasedir    = 29
	opFsyncdir      = 30
	opGetlk         = 31
	opSetlk         = 32
	opSetlkw        = 33
	opAccess        = 34
	opCreate        = 35
	opInterrupt     = 36
	opBmap          = 37
	opDestroy       = 38
	opIoctl         = 39
	opPoll          = 40
	opNotifyReply   = 41
	opBatchForget   = 42
	opFallocate     = 43
	opReaddirplus   = 44
	opRename2       = 45
	opLseek         = 46
	opCopyFileRange = 47
	opSyncfs        = 50
	opTmpfile       = 51
	opStatx         = 52
	opCount         = 64
)

const headerSize = int(unsafe.Sizeof(fuse.InHeader{}))

// request is one request being served. Each reader goroutine owns one and
// reuses it.
type request struct {
	loop *Loop
	hdr  *fuse.InHeader // the copy in arg
	// arg holds the header and the fixed arguments, zero-extended to the
	// size of go-fuse's struct; uint64 elements keep it aligned.
	arg   [48]uint64
	names [2]string
	rest  []byte // after the names: WRITE data, xattr value, ioctl input, forgets

	outBuf [40]uint64 // the reply's fixed struct (StatxOut, 288 bytes, is the largest)
	out    []byte
	data   []byte
	result fuse.ReadResult
	pooled *[]byte
	ent    *ringEntry // the ring entry the request came in, if any
}

// op describes one opcode: its fixed argument size in the kernel's ABI,
// how many NUL-terminated names follow, and how to serve it.
type op struct {
	name    string
	body    int
	names   int
	noReply bool
	serve   func(r *request) fuse.Status
}

var unknownOp = op{name: "UNKNOWN"}

func opFor(code uint32) *op {
	if code < opCount && ops[code].name != "" {
		return &ops[code]
	}
	return &unknownOp
}

// reset readies r for a new request.
func (r *request) reset() {
	r.names = [2]string{}
	r.rest, r.out, r.data, r.result, r.pooled = nil, nil, nil, nil, nil
}

// decode splits req, one request as read from /dev/fuse, into fixed
// arguments, names and the rest.
func (r *request) decode(req []byte, o *op) fuse.Status {
	end := len(req) - int((*fuse.InHeader)(unsafe.Pointer(&req[0])).TotalExtlen)*8
	fixed := headerSize + o.body
	if end < fixed {
		r.decodeParts(req[:headerSize], nil, nil, &unknownOp)
		return fuse.EINVAL
	}
	return r.decodeParts(req[:headerSize], req[headerSize:fixed], req[fixed:end], o)
}

// decodeParts reads a request from its header, its fixed arguments and
// what follows them (names, then data), which the ring delivers apart.
// The fixed arguments are copied into a zeroed buffer the size of
// go-fuse's struct; rest is used in place.
func (r *request) decodeParts(hdr, fixed, rest []byte, o *op) fuse.Status {
	argBytes := unsafe.Slice((*byte)(unsafe.Pointer(&r.arg[0])), len(r.arg)*8)
	clear(argBytes)
	copy(argBytes, hdr)
	r.hdr = (*fuse.InHeader)(unsafe.Pointer(&r.arg[0]))
	if headerSize+len(fixed) > len(argBytes) {
		return fuse.EINVAL
	}
	copy(argBytes[headerSize:], fixed)
	for i := 0; i < o.names; i++ {
		j := bytes.IndexByte(rest, 0)
		if j < 0 {
			return fuse.EINVAL
		}
		r.names[i] = string(rest[:j])
		rest = rest[j+1:]
	}
	r.rest = rest
	return fuse.OK
}

// in returns the fixed arguments as go-fuse's struct T.
func in[T any](r *request) *T { return (*T)(unsafe.Pointer(&r.arg[0])) }

// out makes the reply's fixed struct a zeroed T and returns it.
func out[T any](r *request) *T {
	var zero T
	n := int(unsafe.Sizeof(zero))
	b := unsafe.Slice((*byte)(unsafe.Pointer(&r.outBuf[0])), len(r.outBuf)*8)[:n]
	clear(b)
	r.out = b
	return (*T)(unsafe.Pointer(&r.outBuf[0]))
}

// mayBlock tells whether serving the decoded request may take long or
// wait without bound, so that another goroutine should read meanwhile.
func mayBlock(r *request) bool {
	switch r.hdr.Opcode {
	case opSetlkw, opFsync, opFsyncdir, opFallocate, opCopyFileRange, opRead, opWrite,
		opLink, opRename, opRename2, opIoctl, opSyncfs:
		return true
	case opOpen:
		// Opening a lower file for writing copies its data up.
		return in[fuse.OpenIn](r).Flags&(unix.O_WRONLY|unix.O_RDWR|unix.O_TRUNC) != 0
	case opSetattr:
		// Truncating a lower file copies its data up.
		return in[fuse.SetAttrIn](r).Valid&fuse.FATTR_SIZE != 0
	}
	return false
}

var ops [opCount]op

func init() {
	ops = [opCount]op{
		opLookup: {name: "LOOKUP", names: 1, serve: func(r *request) fuse.Status {
			return r.loop.fs.Lookup(nil, r.hdr, r.names[0], out[fuse.EntryOut](r))
		}},
		opForget: {name: "FORGET", body: 8, noReply: true, serve: func(r *request) fuse.Status {
			r.loop.fs.Forget(r.hdr.NodeId, in[fuse.ForgetIn](r).Nlookup)
			return fuse.OK
		}},
		opBatchForget: {name: "BATCH_FORGET", body: 8, noReply: true, serve: serveBatchForget},
		opGetattr: {name: "GETATTR", body: 16, serve: func(r *request) fuse.Status {
			return r.loop.fs.GetAttr(nil, in[fuse.GetAttrIn](r), out[fuse.AttrOut](r))
		}},
		opSetattr: {name: "SETATTR", body: 88, serve: func(r *request) fuse.Status {
			return r.loop.fs.SetAttr(nil, in[fuse.SetAttrIn](r), out[fuse.AttrOut](r))
		}},
		opReadlink: {name: "READLINK", serve: func(r *request) fuse.Status {
			var st fuse.Status
			r.data, st = r.loop.fs.Readlink(nil, r.hdr)
			return st
		}},
		opSymlink: {name: "SYMLINK", names: 2, serve: func(r *request) fuse.Status {
			// The entry's name comes first, then the link's target.
			return r.loop.fs.Symlink(nil, r.hdr, r.names[1], r.names[0], out[fuse.EntryOut](r))
		}},
		opMknod: {name: "MKNOD", body: 16, names: 1, serve: func(r *request) fuse.Status {
			return r.loop.fs.Mknod(nil, in[fuse.MknodIn](r), r.names[0], out[fuse.EntryOut](r))
		}},
		opMkdir: {name: "MKDIR", body: 8, names: 1, serve: func(r *request) fuse.Status {
			return r.loop.fs.Mkdir(nil, in[fuse.MkdirIn](r), r.names[0], out[fuse.EntryOut](r))
		}},
		opUnlink: {name: "UNLINK", names: 1, serve: func(r *request) fuse.Status {
			return r.loop.fs.Unlink(nil, r.hdr, r.names[0])
		}},
		opRmdir: {name: "RMDIR", names: 1, serve: func(r *request) fuse.Status {
			return r.loop.fs.Rmdir(nil, r.hdr, r.names[0])
		}},
		// RENAME's fuse_rename_in has only the new parent; RENAME2 adds flags.
		opRename:  {name: "RENAME", body: 8, names: 2, serve: serveRename},
		opRename2: {name: "RENAME2", body: 16, names: 2, serve: serveRename},
		opLink: {name: "LINK", body: 8, names: 1, serve: func(r *request) fuse.Status {
			return r.loop.fs.Link(nil, in[fuse.LinkIn](r), r.names[0], out[fuse.EntryOut](r))
		}},
		opOpen: {name: "OPEN", body: 8, serve: func(r *request) fuse.Status {
			return r.loop.fs.Open(nil, in[fuse.OpenIn](r), out[fuse.OpenOut](r))
		}},
		opRead:  {name: "READ", body: 40, serve: serveRead},
		opWrite: {name: "WRITE", body: 40, serve: serveWrite},
		opStatfs: {name: "STATFS", serve: func(r *request) fuse.Status {
			return r.loop.fs.StatFs(nil, r.hdr, out[fuse.StatfsOut](r))
		}},
		opRelease: {name: "RELEASE", body: 24, serve: func(r *request) fuse.Status {
			r.loop.fs.Release(nil, in[fuse.ReleaseIn](r))
			return fuse.OK
		}},
		opFsync: {name: "FSYNC", body: 16, serve: func(r *request) fuse.Status {
			return r.loop.fs.Fsync(nil, in[fuse.FsyncIn](r))
		}},
		// Without SETXATTR_EXT the kernel sends the 8-byte fuse_setxattr_in.
		opSetxattr:  {name: "SETXATTR", body: 8, names: 1, serve: serveSetxattr},
		opGetxattr:  {name: "GETXATTR", body: 8, names: 1, serve: serveXattrRead},
		opListxattr: {name: "LISTXATTR", body: 8, serve: serveXattrRead},
		opRemovexattr: {name: "REMOVEXATTR", names: 1, serve: func(r *request) fuse.Status {
			return r.loop.fs.RemoveXAttr(nil, r.hdr, r.names[0])
		}},
		opFlush: {name: "FLUSH", body: 24, serve: func(r *request) fuse.Status {
			return r.loop.fs.Flush(nil, in[fuse.FlushIn](r))
		}},
		opInit: {name: "INIT", serve: func(r *request) fuse.Status { return fuse.EIO }},
		opOpendir: {name: "OPENDIR", body: 8, serve: func(r *request) fuse.Status {
			return r.loop.fs.OpenDir(nil, in[fuse.OpenIn](r), out[fuse.OpenOut](r))
		}},
		opReaddir:     {name: "READDIR", body: 40, serve: serveReaddir},
		opReaddirplus: {name: "READDIRPLUS", body: 40, serve: serveReaddir},
		opReleasedir: {name: "RELEASEDIR", body: 24, serve: func(r *request) fuse.Status {
			r.loop.fs.ReleaseDir(in[fuse.ReleaseIn](r))
			return fuse.OK
		}},
		opFsyncdir: {name: "FSYNCDIR", body: 16, serve: func(r *request) fuse.Status {
			return r.loop.fs.FsyncDir(nil, in[fuse.FsyncIn](r))
		}},
		opGetlk: {name: "GETLK", body: 48, serve: func(r *request) fuse.Status {
			return r.loop.fs.GetLk(nil, in[fuse.LkIn](r), out[fuse.LkOut](r))
		}},
		opSetlk: {name: "SETLK", body: 48, serve: func(r *request) fuse.Status {
			return r.loop.fs.SetLk(nil, in[fuse.LkIn](r))
		}},
		opSetlkw: {name: "SETLKW", body: 48, serve: func(r *request) fuse.Status {
			return r.loop.fs.SetLkw(nil, in[fuse.LkIn](r))
		}},
		opAccess: {name: "ACCESS", body: 8, serve: func(r *request) fuse.Status {
			return r.loop.fs.Access(nil, in[fuse.AccessIn](r))
		}},
		opCreate: {name: "CREATE", body: 16, names: 1, serve: func(r *request) fuse.Status {
			return r.loop.fs.Create(nil, in[fuse.CreateIn](r), r.names[0], out[fuse.CreateOut](r))
		}},
		// ENOSYS turns interrupts off for the connection (package doc).
		opInterrupt: {name: "INTERRUPT", body: 8, serve: func(r *request) fuse.Status { return fuse.ENOSYS }},
		opBmap:      {name: "BMAP"},
		opDestroy:   {name: "DESTROY", serve: func(r *request) fuse.Status { return fuse.OK }},
		opIoctl:     {name: "IOCTL", body: 32, serve: serveIoctl},
		opPoll:      {name: "POLL"},
		// Answers to notify-retrieve, which is never sent.
		opNotifyReply: {name: "NOTIFY_REPLY", noReply: true, serve: func(r *request) fuse.Status { return fuse.OK }},
		opFallocate: {name: "FALLOCATE", body: 32, serve: func(r *request) fuse.Status {
			return r.loop.fs.Fallocate(nil, in[fuse.FallocateIn](r))
		}},
		opLseek: {name: "LSEEK", body: 24, serve: func(r *request) fuse.Status {
			return r.loop.fs.Lseek(nil, in[fuse.LseekIn](r), out[fuse.LseekOut](r))
		}},
		opCopyFileRange: {name: "COPY_FILE_RANGE", body: 56, serve: func(r *request) fuse.Status {
			n, st := r.loop.fs.CopyFileRange(nil, in[fuse.CopyFileRangeIn](r))
			out[fuse.WriteOut](r).Size = n
			return st
		}},
		opSyncfs: {name: "SYNCFS"},
		// TMPFILE's name argument is a placeholder; the file has none.
		opTmpfile: {name: "TMPFILE", body: 16, serve: func(r *request) fuse.Status {
			return r.loop.fs.Tmpfile(nil, in[fuse.CreateIn](r), out[fuse.CreateOut](r))
		}},
		opStatx: {name: "STATX", body: 24, serve: func(r *request) fuse.Status {
			return r.loop.fs.Statx(nil, in[fuse.StatxIn](r), out[fuse.StatxOut](r))
		}},
	}
}

// forgetOne is one entry of BATCH_FORGET (struct fuse_forget_one).
type forgetOne struct{ nodeID, nlookup uint64 }

// batchForgetCount is the count of a BATCH_FORGET (fuse_batch_forget_in,
// after the header).
func batchForgetCount(r *request) int {
	return int(*(*uint32)(unsafe.Add(unsafe.Pointer(&r.arg[0]), headerSize)))
}

func serveBatchForget(r *request) fuse.Status {
	count := batchForgetCount(r)
	size := int(unsafe.Sizeof(forgetOne{}))
	if count*size > len(r.rest) {
		r.loop.opts.Logger.Printf("fuseloop: BATCH_FORGET of %d entries in %d bytes", count, len(r.rest))
		count = len(r.rest) / size
	}
	for i := 0; i < count; i++ {
		f := (*forgetOne)(unsafe.Pointer(&r.rest[i*size]))
		r.loop.fs.Forget(f.nodeID, f.nlookup)
	}
	return fuse.OK
}

func serveRename(r *request) fuse.Status {
	return r.loop.fs.Rename(nil, in[fuse.RenameIn](r), r.names[0], r.names[1])
}

func serveRead(r *request) fuse.Status {
	args := in[fuse.ReadIn](r)
	buf := r.replyBuffer(int(args.Size))
	res, st := r.loop.fs.Read(nil, args, buf)
	if res != nil {
		r.result = res // Done after the reply is written
	}
	if st != fuse.OK || res == nil {
		return st
	}
	r.data, st = res.Bytes(buf)
	return st
}

func serveWrite(r *request) fuse.Status {
	args := in[fuse.WriteIn](r)
	if int(args.Size) > len(r.rest) {
		return fuse.EINVAL
	}
	n, st := r.loop.fs.Write(nil, args, r.rest[:args.Size])
	out[fuse.WriteOut](r).Size = n
	return st
}

func serveSetxattr(r *request) fuse.Status {
	args := in[fuse.SetXAttrIn](r)
	if int(args.Size) > len(r.rest) {
		return fuse.EINVAL
	}
	return r.loop.fs.SetXAttr(nil, args, r.names[0], r.rest[:args.Size])
}

// serveXattrRead serves GETXATTR and LISTXATTR. A size of 0 asks for the
// size the value or list would take, as getxattr(2) does.
func serveXattrRead(r *request) fuse.Status {
	size := int(in[fuse.GetXAttrIn](r).Size)
	var buf []byte
	if size > 0 {
		buf = r.replyBuffer(size)
	}
	var n uint32
	var st fuse.Status
	if r.hdr.Opcode == opGetxattr {
		n, st = r.loop.fs.GetXAttr(nil, r.hdr, r.names[0], buf)
	} else {
		n, st = r.loop.fs.ListXAttr(nil, r.hdr, buf)
	}
	if size == 0 {
		if st == fuse.ERANGE {
			st = fuse.OK
		}
		out[fuse.GetXAttrOut](r).Size = n
		return st
	}
	if st == fuse.OK {
		r.data = buf[:n]
	}
	return st
}

func serveReaddir(r *request) fuse.Status {
	args := in[fuse.ReadIn](r)
	list := fuse.NewDirEntryList(r.replyBuffer(int(args.Size)), args.Offset)
	var st fuse.Status
	if r.hdr.Opcode == opReaddirplus {
		st = r.loop.fs.ReadDirPlus(nil, args, list)
	} else {
		st = r.loop.fs.ReadDir(nil, args, list)
	}
	r.data = list.Bytes()
	return st
}

func serveIoctl(r *request) fuse.Status {
	args := in[fuse.IoctlIn](r)
	if int(args.InSize) > len(r.rest) {
		return fuse.EINVAL
	}
	outData := r.payloadBuffer(int(args.OutSize))
	st := r.loop.fs.Ioctl(nil, args, r.rest[:args.InSize], out[fuse.IoctlOut](r), outData)
	r.data = outData
	return st
}
