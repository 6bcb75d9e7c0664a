package layerdb

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
	"golang.org/x/sys/unix"
)

// Directory names under the store root. See the package doc for the layout.
const (
	lockFileName  = "lock"
	dbDirName     = "db"
	layersDirName = "layers"
	ctrsDirName   = "containers"
	tmpDirName    = "tmp"

	// diffDirName holds a layer's files; tarSplitName the record of its
	// original tar's headers, from which save rebuilds the exact tar.
	diffDirName  = "diff"
	tarSplitName = "tar-split.json.zst"
)

// DefaultLockTimeout bounds how long Open waits for another strata command
// to finish its transaction. STRATA_LOCK_TIMEOUT (a Go duration) overrides it.
const DefaultLockTimeout = 2 * time.Minute

// ErrLockTimeout is returned when the store stayed locked by other commands
// for longer than the lock timeout.
var ErrLockTimeout = errors.New("store is busy: another strata command held its lock for too long")

// ErrNotFound is returned when a reference names no image, container or layer.
var ErrNotFound = errors.New("not found")

// ErrInUse is returned when removing something that a container, an image or
// a running mount still uses.
var ErrInUse = errors.New("in use")

// Store is an open image store. It holds the store lock and the badger
// database from Open until Close; keep it open only for short work (see the
// package doc), never across a long copy or a mount's lifetime.
type Store struct {
	root   string
	lock   *os.File
	db     *badger.DB
	trashs []*tmpDir // directories to delete after the lock is released
}

// Options tunes Open.
type Options struct {
	// LockTimeout bounds the wait for the store lock; zero means the
	// default (DefaultLockTimeout or STRATA_LOCK_TIMEOUT).
	LockTimeout time.Duration
}

// DefaultRoot is the store root when neither --root nor STRATA_ROOT is given:
// /var/lib/strata for root, $XDG_DATA_HOME/strata or ~/.local/share/strata
// for anyone else. STRATA_ROOT wins over both.
func DefaultRoot() string {
	if r := os.Getenv("STRATA_ROOT"); r != "" {
		return r
	}
	if os.Geteuid() == 0 {
		return "/var/lib/strata"
	}
	if x := os.Getenv("XDG_DATA_HOME"); x != "" {
		return filepath.Join(x, "strata")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		home = "/tmp"
	}
	return filepath.Join(home, ".local", "share", "strata")
}

// Open opens (creating if needed) the store at root, waiting up to the
// default lock timeout for other strata commands, and finishes or removes
// whatever a crashed command left half done.
func Open(root string) (*Store, error) {
	return OpenWithOptions(root, Options{})
}

// OpenWithOptions is Open with explicit options.
func OpenWithOptions(root string, opts Options) (*Store, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("store root %q: %w", root, err)
	}
	for _, d := range []string{abs, filepath.Join(abs, layersDirName), filepath.Join(abs, ctrsDirName), filepath.Join(abs, tmpDirName), filepath.Join(abs, dbDirName)} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("create store directory: %w", err)
		}
	}
	lock, err := lockStore(abs, lockTimeout(opts))
	if err != nil {
		return nil, err
	}
	if err := removeEmptyLogs(filepath.Join(abs, dbDirName)); err != nil {
		lock.Close()
		return nil, err
	}
	db, err := badger.Open(badgerOptions(filepath.Join(abs, dbDirName)))
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("open store database in %s: %w", abs, err)
	}
	s := &Store{root: abs, lock: lock, db: db}
	if err := s.recover(); err != nil {
		s.Close()
		return nil, fmt.Errorf("recover store %s: %w", abs, err)
	}
	return s, nil
}

func lockTimeout(opts Options) time.Duration {
	if opts.LockTimeout > 0 {
		return opts.LockTimeout
	}
	if v := os.Getenv("STRATA_LOCK_TIMEOUT"); v != "" {
		if d, err := time.ParseDuration(v); err == nil && d > 0 {
			return d
		}
	}
	return DefaultLockTimeout
}

// badgerOptions keeps badger small and durable: the store holds kilobytes of
// metadata, so the default 64 MiB memtables and 1 GiB value logs would only
// cost open time and disk; SyncWrites makes a committed transaction survive
// a power cut, not just a kill.
func badgerOptions(dir string) badger.Options {
	return badger.DefaultOptions(dir).
		WithLogger(nil).
		WithSyncWrites(true).
		WithNumVersionsToKeep(1).
		WithMemTableSize(8 << 20).
		WithValueThreshold(256 << 10).
		WithValueLogFileSize(16 << 20).
		WithBlockCacheSize(1 << 20).
		WithCompression(options.None).
		WithIndexCacheSize(0).
		WithNumCompactors(2).
		WithCompactL0OnClose(false)
}

// removeEmptyLogs deletes zero-length badger value logs and memtable
// files. A kill between badger creating one and writing its header (or
// sizing the memtable's mapping) leaves it empty, and badger v4.9 then
// refuses to open ("while opening fid: N err: Create a new file"); found
// by TestKillAtRandomPoints, for .vlog and for .mem files. An empty file
// holds no data, so removing it loses nothing.
func removeEmptyLogs(dbDir string) error {
	for _, pattern := range []string{"*.vlog", "*.mem"} {
		logs, err := filepath.Glob(filepath.Join(dbDir, pattern))
		if err != nil {
			return fmt.Errorf("list %s files: %w", pattern, err)
		}
		for _, l := range logs {
			if st, err := os.Stat(l); err == nil && st.Size() == 0 {
				if err := os.Remove(l); err != nil {
					return fmt.Errorf("remove empty badger file: %w", err)
				}
			}
		}
	}
	return nil
}

// lockStore takes the store's exclusive lock, retrying with backoff: other
// commands hold it only for a transaction, so waiting is the right answer to
// contention, but only for a bounded time.
func lockStore(root string, timeout time.Duration) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(root, lockFileName), os.O_CREATE|os.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open store lock: %w", err)
	}
	deadline := time.Now().Add(timeout)
	wait := 5 * time.Millisecond
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, fmt.Errorf("lock store: %w", err)
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("%w (waited %v for %s)", ErrLockTimeout, timeout, filepath.Join(root, lockFileName))
		}
		time.Sleep(wait)
		wait = min(wait*2, 250*time.Millisecond)
	}
}

// Close releases the database and the lock, then deletes the directories
// this command moved to the trash (after unlocking, so a big removal does
// not keep other commands waiting).
func (s *Store) Close() error {
	if s.db == nil {
		return nil
	}
	err := s.db.Close()
	s.db = nil
	if uerr := s.lock.Close(); err == nil {
		err = uerr
	}
	for _, t := range s.trashs {
		if rerr := t.remove(); err == nil {
			err = rerr
		}
	}
	s.trashs = nil
	if err != nil {
		return fmt.Errorf("close store: %w", err)
	}
	return nil
}

// Root is the absolute store root.
func (s *Store) Root() string { return s.root }

func (s *Store) layerDir(chainHex string) string {
	return filepath.Join(s.root, layersDirName, chainHex)
}

func (s *Store) containerDir(id string) string {
	return filepath.Join(s.root, ctrsDirName, id)
}

// tmpDir is a work-in-progress directory under root/tmp. Its owner holds an
// flock on it for as long as it lives; a tmp entry whose flock can be taken
// belongs to a dead process and is removed by recover.
type tmpDir struct {
	path string
	fd   int
}

func newTmpDir(root, kind string) (*tmpDir, error) {
	parent := filepath.Join(root, tmpDirName)
	if err := os.MkdirAll(parent, 0o700); err != nil { // a store not yet opened
		return nil, fmt.Errorf("create work directory: %w", err)
	}
	p, err := os.MkdirTemp(parent, kind+"-"+strconv.Itoa(os.Getpid())+"-")
	if err != nil {
		return nil, fmt.Errorf("create work directory: %w", err)
	}
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		os.Remove(p)
		return nil, fmt.Errorf("open work directory: %w", err)
	}
	if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		unix.Close(fd)
		os.Remove(p)
		return nil, fmt.Errorf("lock work directory: %w", err)
	}
	return &tmpDir{path: p, fd: fd}, nil
}

// remove deletes the directory and its contents, then drops the lock.
func (t *tmpDir) remove() error {
	if t == nil || t.fd < 0 {
		return nil
	}
	err := removeTree(t.path)
	unix.Close(t.fd)
	t.fd = -1
	return err
}

// release drops the lock without deleting: used once the contents were
// renamed out (the directory itself was renamed with them).
func (t *tmpDir) release() {
	if t != nil && t.fd >= 0 {
		unix.Close(t.fd)
		t.fd = -1
	}
}

// trash moves path into a fresh locked tmp directory, to be deleted by Close.
// The rename is atomic, so from this instant path is gone for everyone.
func (s *Store) trash(path string) error {
	t, err := newTmpDir(s.root, "trash")
	if err != nil {
		return err
	}
	if err := os.Rename(path, filepath.Join(t.path, "x")); err != nil {
		t.remove()
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("move %s to trash: %w", path, err)
	}
	s.trashs = append(s.trashs, t)
	return nil
}

// removeTree deletes a tree that strata wrote, making directories writable
// first where a non-root owner needs it.
func removeTree(path string) error {
	err := os.RemoveAll(path)
	if err == nil || os.Geteuid() == 0 {
		if err != nil {
			return fmt.Errorf("remove %s: %w", path, err)
		}
		return nil
	}
	filepath.WalkDir(path, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			os.Chmod(p, 0o700)
		}
		return nil
	})
	if err := os.RemoveAll(path); err != nil {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}
