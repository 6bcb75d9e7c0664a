package layerdb

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// helperEnv makes the test binary act as a strata command (see TestMain), so
// the crash test can kill -9 a real process in the middle of its work.
const helperEnv = "STRATA_LAYERDB_HELPER"

func TestMain(m *testing.M) {
	if verb := os.Getenv(helperEnv); verb != "" {
		os.Exit(runHelper(verb, os.Args[len(os.Args)-2:]))
	}
	os.Exit(m.Run())
}

func runHelper(verb string, args []string) int {
	root, arg := args[0], args[1]
	var err error
	switch verb {
	case "import":
		_, err = Import(root, arg, ImportOptions{Name: "crash:" + filepath.Base(arg)})
	case "rmi":
		var s *Store
		if s, err = Open(root); err == nil {
			_, err = s.RemoveImage(arg, false)
			s.Close()
		}
	case "commit":
		_, err = Commit(root, arg, "crash:committed", CommitOptions{})
	case "hold":
		err = holdDir(arg)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// TestKillAtRandomPoints kills import, commit and rmi with SIGKILL at random
// instants, then checks that the store opens, lists consistently and holds
// no orphan directory.
func TestKillAtRandomPoints(t *testing.T) {
	work := t.TempDir()
	root := filepath.Join(work, "store")
	var sources []string
	for i := range 3 {
		dir := filepath.Join(work, fmt.Sprintf("rootfs%d", i))
		for j := range 400 {
			writeFile(t, filepath.Join(dir, fmt.Sprintf("d%d/f%d", j%20, j)), strings.Repeat("x", 2000+i))
		}
		sources = append(sources, dir)
	}
	if _, err := Import(root, sources[0], ImportOptions{Name: "crash:base"}); err != nil {
		t.Fatal(err)
	}
	s, err := Open(root)
	if err != nil {
		t.Fatal(err)
	}
	c, err := s.CreateContainer("crash:base", "victim")
	s.Close()
	if err != nil {
		t.Fatal(err)
	}
	for j := range 300 {
		writeFile(t, filepath.Join(c.Upper, fmt.Sprintf("u/f%d", j)), strings.Repeat("u", 3000))
	}
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("STRATA_CRASH_SEED"); v != "" {
		fmt.Sscan(v, &seed)
	}
	t.Logf("kill delays from seed %d (replay with STRATA_CRASH_SEED)", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	const rounds = 40
	for i := range rounds {
		verb, arg := "import", sources[1+i%2]
		switch i % 4 {
		case 2:
			verb, arg = "commit", "victim"
		case 3:
			verb, arg = "rmi", "crash:"+filepath.Base(sources[1])
		}
		cmd := exec.Command(os.Args[0], "-test.run=^$", root, arg)
		cmd.Env = append(os.Environ(), helperEnv+"="+verb)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(rng.IntN(120)) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		checkConsistent(t, root, fmt.Sprintf("round %d (%s)", i, verb))
	}
	// The store still works after all that.
	if _, err := Import(root, sources[2], ImportOptions{Name: "crash:after"}); err != nil {
		t.Fatal(err)
	}
	checkConsistent(t, root, "final import")
}

// checkConsistent opens the store (which recovers) and checks that records
// and directories agree: every layer and container record has its
// directory, every directory its record, images' layers exist, and no work
// in progress is left.
func checkConsistent(t *testing.T, root, when string) {
	t.Helper()
	s, err := Open(root)
	if err != nil {
		t.Fatalf("%s: open: %v", when, err)
	}
	layers, err1 := s.Layers()
	images, err2 := s.Images()
	ctrs, err3 := s.Containers()
	if err := s.Close(); err != nil || err1 != nil || err2 != nil || err3 != nil {
		t.Fatalf("%s: listing: %v %v %v %v", when, err, err1, err2, err3)
	}
	have := map[string]bool{}
	for _, l := range layers {
		have[l.ChainID.Encoded()] = true
		if _, err := os.Stat(l.Dir); err != nil {
			t.Errorf("%s: layer %s has no directory", when, l.ChainID)
		}
		if _, err := os.Stat(filepath.Join(filepath.Dir(l.Dir), tarSplitName)); err != nil {
			t.Errorf("%s: layer %s has no tar-split record", when, l.ChainID)
		}
	}
	for _, im := range images {
		for _, chain := range im.Layers {
			if !have[chain.Encoded()] {
				t.Errorf("%s: image %v lacks layer %s", when, im.Names, chain)
			}
		}
	}
	dirs, _ := os.ReadDir(filepath.Join(root, layersDirName))
	for _, d := range dirs {
		if !have[d.Name()] {
			t.Errorf("%s: orphan layer directory %s", when, d.Name())
		}
	}
	cdirs, _ := os.ReadDir(filepath.Join(root, ctrsDirName))
	if len(cdirs) != len(ctrs) {
		t.Errorf("%s: %d container dirs for %d containers", when, len(cdirs), len(ctrs))
	}
	if tmp, _ := os.ReadDir(filepath.Join(root, tmpDirName)); len(tmp) != 0 {
		t.Errorf("%s: %d work directories left in tmp", when, len(tmp))
	}
}

// A command creates its tmp entry and only then locks it; recovery in a
// concurrent command must not remove the entry in between (it did: an
// import failed with "open work directory: no such file or directory").
// An entry of a live process stays though unlocked; one of a dead process
// goes.
func TestRecoverKeepsUnlockedTmpOfLiveProcess(t *testing.T) {
	root := t.TempDir()
	s, err := Open(root)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	live := filepath.Join(root, tmpDirName, fmt.Sprintf("import-%d-123", os.Getpid()))
	gone := filepath.Join(root, tmpDirName, fmt.Sprintf("import-%d-456", dead.Process.Pid))
	for _, d := range []string{live, gone} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	s, err = Open(root) // recovers
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := os.Stat(live); err != nil {
		t.Errorf("the live process's unlocked entry was removed: %v", err)
	}
	if _, err := os.Stat(gone); !os.IsNotExist(err) {
		t.Errorf("the dead process's entry is still there (%v)", err)
	}
}
