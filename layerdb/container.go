package layerdb

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
)

// MountSpec is everything a mount needs, resolved from the store so the
// mount can close the store and run without it.
type MountSpec struct {
	// Lowers are absolute layer directories, topmost first.
	Lowers []string
	// Upper and Work are the container's writable and work directories;
	// empty for an image.
	Upper, Work string
	ReadOnly    bool
	ContainerID string
}

// MountSpec resolves ref, a container name or ID, else an image name or ID,
// into the directories to mount: a container read-write over its init layer
// and image, an image read-only.
func (s *Store) MountSpec(ref string) (MountSpec, error) {
	var spec MountSpec
	err := s.view(func(txn *badger.Txn) error {
		c, err := s.findContainer(txn, ref)
		if err == nil {
			im := new(Image)
			if err := getJSON(txn, imageKey(c.Image), im); err != nil {
				return fmt.Errorf("container %s: its image: %w", c.Name, err)
			}
			spec = MountSpec{Lowers: append([]string{c.Init}, s.lowerDirs(im)...), Upper: c.Upper, Work: c.Work, ContainerID: c.ID}
			return nil
		}
		if !errors.Is(err, ErrNotFound) {
			return err
		}
		im, err := findImage(txn, ref)
		if err != nil {
			return fmt.Errorf("%q is neither a container nor an image: %w", ref, ErrNotFound)
		}
		spec = MountSpec{Lowers: s.lowerDirs(im), ReadOnly: true}
		return nil
	})
	return spec, err
}

// lowerDirs lists an image's layer directories, topmost first.
func (s *Store) lowerDirs(im *Image) []string {
	out := make([]string, 0, len(im.Layers))
	for i := len(im.Layers) - 1; i >= 0; i-- {
		out = append(out, filepath.Join(s.layerDir(im.Layers[i].Encoded()), diffDirName))
	}
	return out
}

// ImageConfig returns the OCI config of an image, or of a container's image:
// Env, Cmd, Entrypoint, WorkingDir and User for the runner.
func (s *Store) ImageConfig(ref string) (v1.Image, error) {
	var cfg v1.Image
	im, err := s.Image(ref)
	if errors.Is(err, ErrNotFound) {
		c, cerr := s.Container(ref)
		if cerr != nil {
			return cfg, fmt.Errorf("%q is neither an image nor a container: %w", ref, ErrNotFound)
		}
		im, err = s.Image(c.Image.String())
	}
	if err != nil {
		return cfg, err
	}
	if err := json.Unmarshal(im.Config, &cfg); err != nil {
		return cfg, fmt.Errorf("image %s config: %w", im.ID, err)
	}
	return cfg, nil
}

// initPlaceholders are the files the runner bind-mounts over; the init layer
// holds empty ones so the mount targets exist, and diff and commit never
// report them.
var initPlaceholders = []string{"etc/hostname", "etc/hosts", "etc/resolv.conf"}

// initDirs are the directories the runner mounts on.
var initDirs = []string{"dev", "proc", "sys", "etc"}

func isInitPlaceholder(p string) bool { return containsString(initPlaceholders, p) }

// CreateContainer makes a container of an image: a new init layer and empty
// upper and work directories, published under the store lock like a layer.
func (s *Store) CreateContainer(imageRef, name string) (*Container, error) {
	im, err := s.Image(imageRef)
	if err != nil {
		return nil, err
	}
	id, err := newID()
	if err != nil {
		return nil, err
	}
	if name == "" {
		name = id[:12]
	}
	if !validContainerName(name) {
		return nil, fmt.Errorf("invalid container name %q (letters, digits, '_', '.', '-')", name)
	}
	c := s.fillContainer(&Container{ID: id, Name: name, Image: im.ID, State: StateCreated, Created: time.Now().UTC()})
	tmp, err := newTmpDir(s.root, "container")
	if err != nil {
		return nil, err
	}
	if err := s.makeContainerDirs(tmp.path, im); err != nil {
		tmp.remove()
		return nil, err
	}
	err = s.update(func(txn *badger.Txn) error {
		if taken, err := exists(txn, ctrNameKey(name)); err != nil || taken {
			if err == nil {
				err = fmt.Errorf("container name %q is already in use", name)
			}
			return err
		}
		if err := os.Rename(tmp.path, s.containerDir(id)); err != nil {
			return fmt.Errorf("publish container: %w", err)
		}
		if err := txn.Set(ctrNameKey(name), []byte(id)); err != nil {
			return err
		}
		return putJSON(txn, containerKey(id), stripDirs(c))
	})
	if err != nil {
		if _, serr := os.Stat(s.containerDir(id)); serr == nil {
			s.trash(s.containerDir(id))
		}
		tmp.remove()
		return nil, fmt.Errorf("create container: %w", err)
	}
	tmp.release()
	return c, nil
}

func validContainerName(n string) bool {
	if n == "" || len(n) > 128 {
		return false
	}
	for _, r := range n {
		if !(r == '_' || r == '.' || r == '-' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return false
		}
	}
	return true
}

func newID() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("random id: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// makeContainerDirs fills dir with init/, upper/ and work/. The init layer's
// directories copy mode, owner and times from the image, so they do not
// change what the container sees.
func (s *Store) makeContainerDirs(dir string, im *Image) error {
	for _, d := range []string{"init", "upper", "work"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			return fmt.Errorf("create container %s dir: %w", d, err)
		}
	}
	initDir := filepath.Join(dir, "init")
	imageTop := s.statImagePaths(im, initDirs)
	for _, d := range initDirs {
		p := filepath.Join(initDir, d)
		if err := os.Mkdir(p, 0o755); err != nil {
			return fmt.Errorf("create init dir %s: %w", d, err)
		}
		if st, ok := imageTop[d]; ok && st.Mode&unix.S_IFMT == unix.S_IFDIR {
			os.Lchown(p, int(st.Uid), int(st.Gid))
			os.Chmod(p, os.FileMode(st.Mode&0o777))
			unix.UtimesNano(p, []unix.Timespec{st.Atim, st.Mtim})
		}
	}
	for _, f := range initPlaceholders {
		if err := os.WriteFile(filepath.Join(initDir, f), nil, 0o644); err != nil {
			return fmt.Errorf("create init file %s: %w", f, err)
		}
	}
	if st, ok := imageTop["etc"]; ok {
		unix.UtimesNano(filepath.Join(initDir, "etc"), []unix.Timespec{st.Atim, st.Mtim})
	}
	return nil
}

// statImagePaths stats top-level names in the image's merged view.
func (s *Store) statImagePaths(im *Image, names []string) map[string]unix.Stat_t {
	out := map[string]unix.Stat_t{}
	dirs, err := openLayerRoots(s.lowerDirs(im))
	if err != nil {
		return out
	}
	defer closeDirs(dirs)
	entries, err := listUnion(dirs)
	if err != nil {
		return out
	}
	for _, e := range entries {
		if containsString(names, e.name) {
			out[e.name] = e.st
		}
	}
	return out
}

// SetContainerState records a container's state (for the runner).
func (s *Store) SetContainerState(ref, state string) error {
	return s.update(func(txn *badger.Txn) error {
		c, err := s.findContainer(txn, ref)
		if err != nil {
			return err
		}
		c.State = state
		return putJSON(txn, containerKey(c.ID), stripDirs(c))
	})
}

func stripDirs(c *Container) *Container {
	cp := *c
	cp.Init, cp.Upper, cp.Work = "", "", ""
	return &cp
}

// RemoveContainer deletes a container and its layers. A container that a
// process still uses (a mount holds its directories open) is refused unless
// force.
func (s *Store) RemoveContainer(ref string, force bool) error {
	c, err := s.Container(ref)
	if err != nil {
		return err
	}
	if pids := processesUsing([]string{s.containerDir(c.ID)}); len(pids) > 0 && !force {
		return fmt.Errorf("container %s is mounted or running (process %s): %w; unmount it or use -f", c.Name, joinPids(pids), ErrInUse)
	}
	err = s.update(func(txn *badger.Txn) error {
		if err := txn.Delete(containerKey(c.ID)); err != nil {
			return err
		}
		return txn.Delete(ctrNameKey(c.Name))
	})
	if err != nil {
		return fmt.Errorf("remove container %s: %w", c.Name, err)
	}
	return s.trash(s.containerDir(c.ID))
}

// Mounted reports whether any process holds a container's directories open:
// a strata mount keeps its upper and work directories open for its lifetime.
func (s *Store) Mounted(c *Container) bool {
	return len(processesUsing([]string{s.containerDir(c.ID)})) > 0
}

// processesUsing lists the processes (other than this one) that have a file,
// a working directory or a root under one of dirs. It reads /proc, so it sees
// every process for root and one's own otherwise.
func processesUsing(dirs []string) []int {
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var out []int
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == self {
			continue
		}
		if processUses(pid, dirs) {
			out = append(out, pid)
		}
	}
	return out
}

func processUses(pid int, dirs []string) bool {
	base := "/proc/" + strconv.Itoa(pid)
	links := []string{base + "/cwd", base + "/root"}
	if fds, err := os.ReadDir(base + "/fd"); err == nil {
		for _, fd := range fds {
			links = append(links, base+"/fd/"+fd.Name())
		}
	}
	for _, l := range links {
		target, err := os.Readlink(l)
		if err != nil {
			continue
		}
		for _, d := range dirs {
			if target == d || strings.HasPrefix(target, d+"/") {
				return true
			}
		}
	}
	return false
}

func joinPids(pids []int) string {
	var s []string
	for _, p := range pids {
		s = append(s, strconv.Itoa(p))
	}
	return strings.Join(s, ", ")
}
