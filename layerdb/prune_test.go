package layerdb

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// holdDir is the "hold" helper verb: it holds dir open with O_PATH, as a
// strata mount daemon holds its layer roots, says so on stdout, and lets go
// when its stdin closes.
func holdDir(dir string) error {
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("hold %s: %w", dir, err)
	}
	defer unix.Close(fd)
	fmt.Println("held")
	_, err = io.Copy(io.Discard, os.Stdin)
	return err
}

// holdInChild starts a child process that holds dir open and returns once
// it does; closing the returned writer makes the child exit, and the
// returned wait reaps it.
func holdInChild(t *testing.T, root, dir string) (io.WriteCloser, func() error) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$", root, dir)
	cmd.Env = append(os.Environ(), helperEnv+"=hold")
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); cmd.Wait() })
	if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || line != "held\n" {
		t.Fatalf("holder said %q, %v", line, err)
	}
	return stdin, cmd.Wait
}

// TestPruneRefusesHeldLayer: prune removes the layers no image refers to,
// but not while a live process (a mount) holds one open; once the process
// is gone it removes them. The layer is published with no image, which is
// what prune exists for (a store whose records drifted).
func TestPruneRefusesHeldLayer(t *testing.T) {
	root := filepath.Join(t.TempDir(), "store")
	p, err := ingestLayer(root, bytes.NewReader(makeTar(t, file("a", "x"))), layerExpect{size: -1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := publish(root, []*pendingLayer{p}, nil); err != nil {
		t.Fatal(err)
	}
	release, wait := holdInChild(t, root, p.tmp.path+"/"+diffDirName)

	s := mustOpen(t, root)
	if deleted, err := s.Prune(); !errors.Is(err, ErrInUse) {
		t.Fatalf("prune of a held layer: deleted %v, error %v; want ErrInUse", deleted, err)
	}
	s.Close()
	release.Close()
	if err := wait(); err != nil {
		t.Fatalf("holder: %v", err)
	}
	s = mustOpen(t, root)
	deleted, err := s.Prune()
	if err != nil || len(deleted) != 1 || deleted[0] != p.layer.ChainID {
		t.Fatalf("prune after the holder exited: deleted %v, %v; want %s", deleted, err, p.layer.ChainID)
	}
	s.Close()
	if dirs, _ := os.ReadDir(filepath.Join(root, layersDirName)); len(dirs) != 0 {
		t.Errorf("prune left %d layer directories", len(dirs))
	}
}
