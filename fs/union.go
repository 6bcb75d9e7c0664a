package fs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/strata-fs/strata/fuseloop"
	"github.com/strata-fs/strata/whiteout"
)

// Config describes one union mount.
type Config struct {
	// Lowers are the read-only layers, topmost first.
	Lowers []string
	// Upper and Work are the writable layer and its scratch directory on
	// the same filesystem. Both empty: a read-only view.
	Upper, Work string
	// Volatile skips the fsyncs that make copy-up and metadata durable.
	Volatile bool
	// ReadOnly serves a read-only view even with an upper layer.
	ReadOnly bool
	// ProbeDirSize is the size (st_size) from which a lower directory is
	// looked up name by name until something lists it, instead of read
	// whole on the first lookup (probe.go). 0 takes DefaultProbeDirSize;
	// a negative size never probes.
	ProbeDirSize int64
}

// DefaultProbeDirSize is ProbeDirSize's default: about 10,000 entries on
// ext4, xfs or tmpfs.
const DefaultProbeDirSize = 256 << 10

// probeOver is the directory size from which lookups probe, 0 for never.
func (c Config) probeOver() int64 {
	switch {
	case c.ProbeDirSize == 0:
		return DefaultProbeDirSize
	case c.ProbeDirSize < 0:
		return 0
	}
	return c.ProbeDirSize
}

// union is the state shared by all nodes of one mount.
type union struct {
	cfg    Config
	lowers []*layer
	upper  *layer // nil when read-only
	work   *layer // nil when read-only

	// treeMu orders renames against everything that turns a node into a
	// path in the upper layer: Rename holds it exclusively while it moves
	// the backing entry and our parent/name links; every other operation
	// holds it shared while it resolves a path to a descriptor.
	treeMu sync.RWMutex

	// nodes maps inode numbers to live nodes; see node.newChild.
	// ids holds the nodes the kernel holds, each at the slot its FUSE
	// node id names; freeIDs are the empty slots, and lastSeq numbers the
	// ids handed out, so a node that left the table but is still held by
	// the kernel never shares its id with its successor (kernel.go).
	// aliases are the other names of nodes the kernel knows by more than
	// one (aliases.go).
	// twins are the inode numbers whose objects have, or had, a second
	// kernel inode (see supersede).
	// superseded are the nodes taken out of the table by supersede that
	// the kernel still holds, with their objects' inode numbers;
	// anySuperseded says whether there ever were any, so the common case
	// skips the lock (see node.current).
	nodesMu       sync.Mutex
	nodes         map[uint64]*node
	ids           []*node
	freeIDs       []uint32
	lastSeq       uint32
	aliases       map[*node][]alias
	twins         map[uint64]struct{}
	superseded    map[*node]uint64
	anySuperseded atomic.Bool
	// removed holds the last attributes of removed upper objects whose
	// nodes the kernel still holds (see union.objectRemoved).
	removed map[*node]unix.Stat_t

	wfmt whiteout.Format
	// xattrPrefix is strata's own bookkeeping namespace, inside overlay's
	// private one so kernel overlayfs (which ignores names it does not
	// know there) never shows it: trusted.overlay.strata. or
	// user.overlay.strata.
	xattrPrefix string
	overlayNS   string // overlay's namespace we write: trusted.overlay. or user.overlay.

	tmpSeq uint64 // guarded by tmpMu; names of work-dir temporaries
	tmpMu  sync.Mutex

	dirFds atomic.Int64 // cached directory descriptors (dirfd.go)
	// idleBackings counts passthrough backing files kept registered for
	// nodes with no handle open (file.go keepBacking).
	idleBackings atomic.Int64
	// maxIdleBackings bounds idleBackings, maxDirFds dirFds: the
	// descriptor limit's shares (descriptorBudget).
	maxIdleBackings, maxDirFds int64
	// retired holds backing ids of removed objects not yet let go of
	// (retire.go).
	retired backingRetirer

	prefetch *prefetcher // builds subdirectory listings ahead (prefetch.go)
	plus     plusPolicy  // which READDIRPLUS entries carry attributes (plus.go)

	// passthrough: the kernel agreed to FUSE passthrough in INIT (and
	// STRATA_NO_PASSTHROUGH is unset). Set before the first request is
	// served as root, right after INIT otherwise.
	passthrough atomic.Bool

	root *node
	// srv sends notifications to the kernel; set by INIT.
	srv atomic.Pointer[fuse.Server]
}

// Errors for a stack that cannot be mounted; the CLI prints them as they are.
var (
	ErrSameDir       = errors.New("the same directory is given twice")
	ErrCrossDevice   = errors.New("upper and work directories are on different filesystems")
	ErrWorkNotEmpty  = errors.New("work directory holds files strata did not make")
	ErrMountInLayer  = errors.New("mountpoint is inside or over a layer (that would deadlock)")
	ErrNoLowers      = errors.New("at least one lower layer is needed")
	ErrTooManyLowers = fmt.Errorf("more than %d lower layers", maxLowers)
	ErrUpperNeedWork = errors.New("an upper layer needs a work directory and the other way round")
)

// workMarker names the one directory strata keeps in a work dir; anything
// else there is foreign and refused.
const workMarker = "strata"

func newUnion(cfg Config) (*union, error) {
	if len(cfg.Lowers) == 0 {
		return nil, ErrNoLowers
	}
	if len(cfg.Lowers) > maxLowers {
		return nil, ErrTooManyLowers
	}
	if (cfg.Upper == "") != (cfg.Work == "") {
		return nil, ErrUpperNeedWork
	}
	u := &union{cfg: cfg, nodes: map[uint64]*node{}, aliases: map[*node][]alias{}, twins: map[uint64]struct{}{}, superseded: map[*node]uint64{}, removed: map[*node]unix.Stat_t{}}
	u.maxDirFds, u.maxIdleBackings = descriptorBudget(openFileLimit())
	ok := false
	defer func() {
		if !ok {
			u.close()
		}
	}()
	for _, p := range cfg.Lowers {
		l, err := openLayer(p)
		if err != nil {
			return nil, err
		}
		u.lowers = append(u.lowers, l)
	}
	all := append([]*layer(nil), u.lowers...)
	if cfg.Upper != "" {
		var err error
		if u.upper, err = openLayer(cfg.Upper); err != nil {
			return nil, fmt.Errorf("upper: %w", err)
		}
		if u.work, err = openLayer(cfg.Work); err != nil {
			return nil, fmt.Errorf("work: %w", err)
		}
		if u.upper.dev != u.work.dev {
			return nil, fmt.Errorf("%w: %s and %s", ErrCrossDevice, u.upper.path, u.work.path)
		}
		all = append([]*layer{u.upper}, all...)
		all = append(all, u.work)
	}
	if err := checkDistinct(all); err != nil {
		return nil, err
	}
	if u.upper != nil {
		assignDevIndexes(append([]*layer{u.upper}, u.lowers...))
	} else {
		assignDevIndexes(u.lowers)
	}
	if os.Geteuid() == 0 {
		u.wfmt = whiteout.FormatOverlay
		u.xattrPrefix = whiteout.XattrTrustedPrefix + "strata."
		u.overlayNS = whiteout.XattrTrustedPrefix
	} else {
		u.wfmt = whiteout.FormatOCI
		u.xattrPrefix = whiteout.XattrUserPrefix + "strata."
		u.overlayNS = whiteout.XattrUserPrefix
	}
	if u.work != nil {
		if err := u.prepareWork(); err != nil {
			return nil, err
		}
	}
	u.prefetch = newPrefetcher(u)
	ok = true
	return u, nil
}

// checkDistinct refuses a stack that names one directory twice, or one
// layer inside another.
func checkDistinct(all []*layer) error {
	type key struct{ dev, ino uint64 }
	seen := map[key]string{}
	for _, l := range all {
		var st unix.Stat_t
		if err := unix.Fstat(l.rootFd, &st); err != nil {
			return fmt.Errorf("%s: %w", l.path, err)
		}
		k := key{st.Dev, st.Ino}
		if prev, dup := seen[k]; dup {
			return fmt.Errorf("%w: %s and %s", ErrSameDir, prev, l.path)
		}
		seen[k] = l.path
	}
	return nil
}

// prepareWork makes sure the work directory holds nothing but strata's own
// scratch directory, and empties that (leftovers of a crash are temporaries
// that were never published).
func (u *union) prepareWork() error {
	fd, err := u.work.open("", unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return fmt.Errorf("work: %w", err)
	}
	defer unix.Close(fd)
	var foreign []string
	err = readDirents(fd, func(name string, _ uint64, _ uint8) error {
		// overlayfs leaves "work" and "index" in a work dir it used;
		// strata accepts a work dir that kernel overlayfs shared.
		if name != workMarker && name != indexDir && name != "work" && name != "index" {
			foreign = append(foreign, name)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("work: %w", err)
	}
	if len(foreign) > 0 {
		return fmt.Errorf("%w: %s holds %q", ErrWorkNotEmpty, u.work.path, foreign)
	}
	if err := removeAllAt(fd, workMarker); err != nil {
		return fmt.Errorf("clean work dir: %w", err)
	}
	if err := unix.Mkdirat(fd, workMarker, 0o700); err != nil {
		return fmt.Errorf("work: %w", err)
	}
	return u.prepareIndex(fd)
}

func (u *union) close() {
	if u.prefetch != nil {
		// Before the layers close: a worker resolves paths against them.
		u.prefetch.stop()
	}
	for _, l := range u.lowers {
		l.close()
	}
	if u.upper != nil {
		u.upper.close()
	}
	if u.work != nil {
		u.work.close()
	}
}

// workDir opens strata's scratch directory in the work dir.
func (u *union) workDir() (int, error) {
	return u.work.openDir(workMarker)
}

// tmpName returns a fresh name for a temporary in the work directory.
func (u *union) tmpName() string {
	u.tmpMu.Lock()
	u.tmpSeq++
	n := u.tmpSeq
	u.tmpMu.Unlock()
	return fmt.Sprintf("tmp.%d.%d", os.Getpid(), n)
}

// fsync flushes fd unless the mount is volatile.
func (u *union) fsync(fd int) error {
	if u.cfg.Volatile {
		return nil
	}
	if err := unix.Fsync(fd); err != nil {
		return fmt.Errorf("fsync: %w", err)
	}
	return nil
}

// removeAllAt removes name (file or tree) inside the directory dirfd, never
// following a symlink.
func removeAllAt(dirfd int, name string) error {
	err := unix.Unlinkat(dirfd, name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EPERM) {
		return err
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	var names []string
	err = readDirents(fd, func(n string, _ uint64, _ uint8) error {
		names = append(names, n)
		return nil
	})
	if err == nil {
		for _, n := range names {
			if err = removeAllAt(fd, n); err != nil {
				break
			}
		}
	}
	unix.Close(fd)
	if err != nil {
		return err
	}
	return unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR)
}

// cacheTimeout is how long the kernel may keep entries, attributes and
// negative lookups. Lower layers never change and every change to the upper
// layer goes through this daemon, which answers with fresh attributes and
// entries, so the kernel's cache never goes stale behind our back.
const cacheTimeout = time.Hour

// Server is a mounted union.
type Server struct {
	*fuse.Server
	u    *union
	loop *fuseloop.Mounted // nil when go-fuse serves (see serve)
}

// Unmount unmounts and waits until every request is answered.
func (s *Server) Unmount() error {
	if s.loop != nil {
		return s.loop.Unmount()
	}
	return s.Server.Unmount()
}

// Wait returns when the mount is gone and every request is answered.
func (s *Server) Wait() {
	if s.loop != nil {
		s.loop.Wait()
		return
	}
	s.Server.Wait()
}

// MountOptions are the FUSE-level options of a mount.
type MountOptions struct {
	AllowOther         bool
	DefaultPermissions bool
	FsName             string
	// Extra are mount(2) options passed through (nodev, nosuid, noexec,
	// noatime, ro, ...).
	Extra []string
	Debug bool
	// NoUring serves through /dev/fuse even where the kernel offers FUSE
	// over io_uring (the fuse module's enable_uring parameter).
	NoUring bool
	// UringSched is the scheduling class of the threads that answer ring
	// requests: auto (the default: idle while the machine has CPU time to
	// spare), idle or normal. fuseloop's package doc says why.
	UringSched fuseloop.ReaperClass
}

// Mount serves the union described by cfg at mountpoint and returns once
// the kernel has the mount.
func Mount(mountpoint string, cfg Config, mo MountOptions) (*Server, error) {
	if err := checkMountpoint(mountpoint, cfg); err != nil {
		return nil, err
	}
	u, err := newUnion(cfg)
	if err != nil {
		return nil, err
	}
	root, err := u.newRoot()
	if err != nil {
		u.close()
		return nil, err
	}
	opts := fuse.MountOptions{
		AllowOther:  mo.AllowOther,
		FsName:      mo.FsName,
		Name:        "strata",
		Debug:       mo.Debug,
		EnableLocks: true,
		// With POSIX ACL support the kernel caches each inode's ACLs and
		// checks them itself; without it every ls -l costs an extra
		// getxattr(system.posix_acl_access) round trip per file.
		EnableAcl: true,
		// With HANDLE_KILLPRIV_V2 the kernel leaves dropping set-id bits
		// and capabilities to the server instead of asking for
		// security.capability and the mode before every write, chown and
		// truncate (two round trips each). The backing filesystem drops
		// them as the daemon does those operations; setattr and write
		// handle what depends on the caller (attr.go, file.go).
		ExtraCapabilities: fuse.CAP_HANDLE_KILLPRIV_V2,
		// A symlink's target never changes while its inode lives (a
		// new target is a new symlink), so the kernel may keep it.
		EnableSymlinkCaching: true,
		// Writes of open files go to the backing file by passthrough, so
		// WRITE requests are rare; every /dev/fuse reader buffer is
		// MaxWrite large and go-fuse pools one per reader and P, so 1 MiB
		// buffers cost 8 MiB of heap and 60 MiB of garbage per 100,000
		// requests. 128 KiB is the kernel's default request size.
		MaxWrite:      128 << 10,
		MaxReadAhead:  1 << 20,
		DirectMount:   true,
		MaxBackground: 64,
	}
	if mo.FsName == "" {
		opts.FsName = "strata"
	}
	if mo.DefaultPermissions {
		opts.Options = append(opts.Options, "default_permissions")
	}
	extra := mo.Extra
	if cfg.ReadOnly || u.upper == nil {
		extra = append(extra, "ro")
	}
	if os.Geteuid() == 0 {
		// mount(2) itself: these are flags, and the kernel refuses
		// them as option strings. Without any, a root mount allows
		// devices and setuid files, as overlayfs does.
		opts.DirectMountFlags = mountFlags(extra)
	} else {
		// fusermount3 turns the words into flags itself.
		opts.Options = append(opts.Options, extra...)
	}
	loopOpts := fuseloop.Options{Uring: !mo.NoUring, ReaperClass: mo.UringSched, Negotiated: u.negotiated}
	srv, err := serve(mountpoint, root, &opts, loopOpts)
	if err != nil {
		u.close()
		return nil, fmt.Errorf("mount %s: %w", mountpoint, err)
	}
	srv.u = u
	return srv, nil
}

// serve mounts the node tree on readers that yield now and then
// (yield.go), and returns once the kernel has answered INIT.
//
// As root the mount is made here and requests are read by fuseloop, one
// reader at a time; go-fuse then only negotiates INIT and sends
// notifications, on the same descriptor (the magic /dev/fd/N mount
// point). Other users mount through fusermount3, which go-fuse drives, and
// go-fuse's own loop serves.
func serve(mountpoint string, root *node, opts *fuse.MountOptions, loopOpts fuseloop.Options) (*Server, error) {
	raw := yieldingFS{newKernelFS(root)}
	if os.Geteuid() != 0 {
		srv, err := fuse.NewServer(raw, mountpoint, opts)
		if err != nil {
			return nil, err
		}
		go srv.Serve()
		if err := srv.WaitMount(); err != nil {
			// The serve loop ends by itself once the mount is gone.
			return nil, err
		}
		loopOpts.Negotiated(srv) // go-fuse serves from INIT on: the first opens may not pass through
		return &Server{Server: srv}, nil
	}
	m, err := fuseloop.Mount(raw, mountpoint, *opts, loopOpts)
	if err != nil {
		return nil, err
	}
	return &Server{Server: m.Server, loop: m}, nil
}

// negotiated records what the kernel agreed to in INIT.
func (u *union) negotiated(srv *fuse.Server) {
	u.passthrough.Store(srv.KernelSettings().Flags64()&fuse.CAP_PASSTHROUGH != 0 && os.Getenv("STRATA_NO_PASSTHROUGH") == "")
}

// mountFlags turns mount(2) option words into MS_* flags. The result is
// never 0, which go-fuse would read as "nosuid,nodev".
func mountFlags(words []string) uintptr {
	flags := uintptr(unix.MS_RELATIME)
	set := map[string]uintptr{
		"ro": unix.MS_RDONLY, "nodev": unix.MS_NODEV, "nosuid": unix.MS_NOSUID, "noexec": unix.MS_NOEXEC,
		"noatime": unix.MS_NOATIME, "nodiratime": unix.MS_NODIRATIME, "strictatime": unix.MS_STRICTATIME,
		"sync": unix.MS_SYNCHRONOUS, "dirsync": unix.MS_DIRSYNC, "lazytime": unix.MS_LAZYTIME,
		"relatime": unix.MS_RELATIME,
	}
	clear := map[string]uintptr{
		"dev": unix.MS_NODEV, "suid": unix.MS_NOSUID, "exec": unix.MS_NOEXEC, "atime": unix.MS_NOATIME,
		"diratime": unix.MS_NODIRATIME, "async": unix.MS_SYNCHRONOUS,
	}
	for _, w := range words {
		if f, ok := set[w]; ok {
			if f == unix.MS_NOATIME || f == unix.MS_STRICTATIME {
				flags &^= unix.MS_RELATIME
			}
			flags |= f
		}
		if f, ok := clear[w]; ok {
			flags &^= f
		}
	}
	return flags
}

// Close releases the layer descriptors after the server has stopped.
func (s *Server) Close() { s.u.close() }

// checkMountpoint refuses a mountpoint that lies inside or over a layer: the
// daemon would then look up names through its own mount and deadlock.
func checkMountpoint(mountpoint string, cfg Config) error {
	if (cfg.Upper == "") != (cfg.Work == "") {
		return ErrUpperNeedWork
	}
	dirs := append([]string(nil), cfg.Lowers...)
	if cfg.Upper != "" {
		dirs = append(dirs, cfg.Upper, cfg.Work)
	}
	mp, err := realPath(mountpoint)
	if err != nil {
		return fmt.Errorf("mountpoint: %w", err)
	}
	for _, d := range dirs {
		rd, err := realPath(d)
		if err != nil {
			continue // reported with a better message by newUnion
		}
		if within(mp, rd) || within(rd, mp) {
			return fmt.Errorf("%w: %s and %s", ErrMountInLayer, mountpoint, d)
		}
	}
	return nil
}

func realPath(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	return filepath.EvalSymlinks(abs)
}

// within reports whether path p is dir or lies below it.
func within(p, dir string) bool {
	if p == dir {
		return true
	}
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}
