package layerdb

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func writeFile(t *testing.T, path, body string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

// buildUmociImage makes a 3-layer OCI layout with umoci: a base, a layer
// that adds and deletes files, and one that replaces a directory. It
// returns the layout directory; the image is "layout:tag".
func buildUmociImage(t *testing.T, dir, tag string, extra func(rootfs string)) string {
	t.Helper()
	layout := filepath.Join(dir, "layout")
	if _, err := os.Stat(layout); err != nil {
		run(t, "umoci", "init", "--layout", layout)
	}
	ref := layout + ":" + tag
	run(t, "umoci", "new", "--image", ref)
	steps := []func(r string){
		func(r string) {
			writeFile(t, r+"/etc/os-release", "ID=strata-test\n")
			writeFile(t, r+"/usr/lib/lib.so", strings.Repeat("L", 10000))
			writeFile(t, r+"/usr/share/doc/a", "doc a")
			writeFile(t, r+"/usr/share/doc/b", "doc b")
			os.Symlink("../lib/lib.so", r+"/usr/share/libsym")
			os.Link(r+"/usr/lib/lib.so", r+"/usr/lib/lib.so.1")
			os.Chmod(r+"/usr/share/doc/b", 0o4755)
			os.Lchown(r+"/usr/share/doc/a", 1000, 1000)
			unix.Setxattr(r+"/usr/share/doc/a", "user.note", []byte("hello"), 0)
		},
		func(r string) {
			os.Remove(r + "/usr/share/doc/b")
			writeFile(t, r+"/etc/os-release", "ID=strata-test\nVERSION=2\n")
			writeFile(t, r+"/opt/app/run.sh", "#!/bin/sh\necho hi\n")
		},
		func(r string) {
			os.RemoveAll(r + "/usr/share/doc")
			writeFile(t, r+"/usr/share/doc/new", "replaced")
			if extra != nil {
				extra(r)
			}
		},
	}
	for i, step := range steps {
		bundle := filepath.Join(dir, fmt.Sprintf("bundle-%s-%d", tag, i))
		run(t, "umoci", "unpack", "--image", ref, bundle)
		step(bundle + "/rootfs")
		run(t, "umoci", "repack", "--image", ref, bundle)
		os.RemoveAll(bundle)
	}
	return layout
}

// treeEntry describes one path of a tree for comparison.
type treeEntry struct {
	Type, Mode, Owner, Content, Link string
}

// listTree describes every path under dir (not following symlinks).
func listTree(t *testing.T, dir string) map[string]treeEntry {
	t.Helper()
	out := map[string]treeEntry{}
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." {
			return nil
		}
		st := fi.Sys().(*syscall.Stat_t)
		e := treeEntry{Type: fi.Mode().Type().String(), Mode: fmt.Sprintf("%o", st.Mode&0o7777), Owner: fmt.Sprintf("%d:%d", st.Uid, st.Gid)}
		switch {
		case fi.Mode().IsRegular():
			b, _ := os.ReadFile(p)
			e.Content = fmt.Sprintf("%x", sha256.Sum256(b))
		case fi.Mode()&os.ModeSymlink != 0:
			e.Link, _ = os.Readlink(p)
		}
		out[rel] = e
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func compareTrees(t *testing.T, what string, got, want map[string]treeEntry) {
	t.Helper()
	var keys []string
	for k := range want {
		keys = append(keys, k)
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	bad := 0
	for _, k := range keys {
		if got[k] != want[k] {
			t.Errorf("%s: %s: got %+v, want %+v", what, k, got[k], want[k])
			if bad++; bad > 20 {
				t.FailNow()
			}
		}
	}
}

// untar extracts a flat tar (our own export) with the system tar.
func untar(t *testing.T, file, dir string) {
	t.Helper()
	os.MkdirAll(dir, 0o755)
	run(t, "tar", "--xattrs", "--xattrs-include=user.*", "-xpf", file, "-C", dir)
}

func mustOpen(t *testing.T, root string) *Store {
	t.Helper()
	s, err := Open(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestRoundTripWithRealTools: umoci builds a 3-layer image; strata imports
// it, shows its history, a container changes files and is committed, save
// writes it out; skopeo and podman accept the archive with the layer
// digests strata reported, and umoci unpacks it to the same tree strata
// exports.
func TestRoundTripWithRealTools(t *testing.T) {
	work := t.TempDir()
	root := filepath.Join(work, "store")
	layout := buildUmociImage(t, work, "v1", nil)

	images, err := Import(root, layout, ImportOptions{Name: "rt:v1"})
	if err != nil {
		t.Fatal(err)
	}
	im := images[0]
	if len(im.Layers) != 3 {
		t.Fatalf("imported %d layers, want 3", len(im.Layers))
	}
	umociTree := unpackWithUmoci(t, work, layout+":v1")
	compareTrees(t, "export of imported image vs umoci unpack", exportTree(t, root, "rt:v1"), umociTree)

	// A container: change, add and delete files in its upper layer, the way
	// the union filesystem records them (copy-up, whiteout, opaque dir).
	s, err := Open(root)
	if err != nil {
		t.Fatal(err)
	}
	c, err := s.CreateContainer("rt:v1", "rt-ctr")
	s.Close()
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, c.Upper+"/etc/os-release", "ID=changed\n")
	writeFile(t, c.Upper+"/srv/data/new.txt", "new file")
	if err := unix.Mknod(c.Upper+"/opt", unix.S_IFCHR, 0); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(c.Upper+"/usr/share/doc", 0o755)
	unix.Setxattr(c.Upper+"/usr/share/doc", "trusted.overlay.opaque", []byte("y"), 0)
	writeFile(t, c.Upper+"/usr/share/doc/only", "only me")

	changes, err := Diff(root, "rt-ctr")
	if err != nil {
		t.Fatal(err)
	}
	wantChanges := []string{"C /etc", "C /etc/os-release", "D /opt", "A /srv", "A /srv/data", "A /srv/data/new.txt", "C /usr", "C /usr/share", "C /usr/share/doc", "D /usr/share/doc/new", "A /usr/share/doc/only"}
	var gotChanges []string
	for _, ch := range changes {
		gotChanges = append(gotChanges, ch.String())
	}
	if strings.Join(gotChanges, "\n") != strings.Join(wantChanges, "\n") {
		t.Errorf("diff:\n%s\nwant:\n%s", strings.Join(gotChanges, "\n"), strings.Join(wantChanges, "\n"))
	}

	committed, err := Commit(root, "rt-ctr", "rt:v2", CommitOptions{Message: "test change", Author: "tester"})
	if err != nil {
		t.Fatal(err)
	}
	if len(committed.Layers) != 4 {
		t.Fatalf("commit made %d layers, want 4", len(committed.Layers))
	}
	rows := historyOf(t, root, "rt:v2")
	if last := rows[len(rows)-1]; last.Comment != "test change" || last.EmptyLayer {
		t.Errorf("commit history entry %+v", last)
	}

	archive := filepath.Join(work, "saved.tar")
	if err := Save(root, []string{"rt:v2"}, archive, SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	wantDiffIDs := diffIDsOf(t, root, "rt:v2")

	var inspect struct{ Layers []digest.Digest }
	if err := json.Unmarshal([]byte(run(t, "skopeo", "inspect", "docker-archive:"+archive)), &inspect); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(inspect.Layers) != fmt.Sprint(wantDiffIDs) {
		t.Errorf("skopeo sees layers %v, strata reported %v", inspect.Layers, wantDiffIDs)
	}

	podmanLayers := podmanLoad(t, work, archive)
	if fmt.Sprint(podmanLayers) != fmt.Sprint(wantDiffIDs) {
		t.Errorf("podman loaded layers %v, strata reported %v", podmanLayers, wantDiffIDs)
	}

	// umoci unpack of the saved archive's OCI layout gives strata's view.
	savedLayout := filepath.Join(work, "saved-layout")
	os.MkdirAll(savedLayout, 0o755)
	run(t, "tar", "-xf", archive, "-C", savedLayout)
	compareTrees(t, "umoci unpack of saved image vs strata export", unpackWithUmoci(t, work, savedLayout+":v2"), exportTree(t, root, "rt-ctr"))
}

func unpackWithUmoci(t *testing.T, work, ref string) map[string]treeEntry {
	t.Helper()
	bundle, err := os.MkdirTemp(work, "unpack-")
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(bundle)
	run(t, "umoci", "unpack", "--image", ref, bundle)
	return listTree(t, bundle+"/rootfs")
}

func exportTree(t *testing.T, root, ref string) map[string]treeEntry {
	t.Helper()
	dir := t.TempDir()
	if err := Export(root, ref, dir+"/x.tar", ExportOptions{}); err != nil {
		t.Fatal(err)
	}
	checkFlatTar(t, dir+"/x.tar")
	untar(t, dir+"/x.tar", dir+"/tree")
	tree := listTree(t, dir+"/tree")
	if strings.HasSuffix(ref, "-ctr") { // a container's init layer adds mount points
		for _, p := range append([]string{"dev", "proc", "sys"}, initPlaceholders...) {
			delete(tree, p)
		}
	}
	return tree
}

// checkFlatTar fails if an exported tar holds any whiteout marker.
func checkFlatTar(t *testing.T, file string) {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(hdr.Name, ".wh.") || (hdr.Typeflag == tar.TypeChar && hdr.Devmajor == 0 && hdr.Devminor == 0) {
			t.Errorf("export holds whiteout %q", hdr.Name)
		}
	}
}

func historyOf(t *testing.T, root, ref string) []struct {
	Comment    string `json:"comment"`
	EmptyLayer bool   `json:"empty_layer"`
} {
	t.Helper()
	s, err := Open(root)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	im, err := s.Image(ref)
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		History []struct {
			Comment    string `json:"comment"`
			EmptyLayer bool   `json:"empty_layer"`
		} `json:"history"`
	}
	json.Unmarshal(im.Config, &cfg)
	return cfg.History
}

func diffIDsOf(t *testing.T, root, ref string) []digest.Digest {
	t.Helper()
	s, err := Open(root)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	im, err := s.Image(ref)
	if err != nil {
		t.Fatal(err)
	}
	var out []digest.Digest
	for _, chain := range im.Layers {
		l, err := s.Layer(chain.String())
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, l.DiffID)
	}
	return out
}

// podmanLoad loads an archive into a throwaway podman store and returns the
// loaded image's layer digests.
func podmanLoad(t *testing.T, work, archive string) []digest.Digest {
	t.Helper()
	proot := filepath.Join(work, "podman")
	runroot, err := os.MkdirTemp("", "pm") // podman wants a short runroot
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(runroot) })
	args := []string{"--root", proot + "/root", "--runroot", runroot, "--storage-driver", "vfs"}
	t.Cleanup(func() {
		exec.Command("podman", append(args, "rmi", "-af")...).Run()
		exec.Command("podman", append(args, "system", "reset", "-f")...).Run()
	})
	out := run(t, "podman", append(args, "load", "-i", archive)...)
	var id string
	for _, line := range strings.Split(out, "\n") {
		if n, ok := strings.CutPrefix(line, "Loaded image: "); ok {
			id = strings.TrimSpace(n)
		}
	}
	if id == "" {
		t.Fatalf("podman load printed no image:\n%s", out)
	}
	var layers []digest.Digest
	js := run(t, "podman", append(args, "image", "inspect", "--format", "{{json .RootFS.Layers}}", id)...)
	if err := json.Unmarshal([]byte(js), &layers); err != nil {
		t.Fatalf("podman inspect: %v\n%s", err, js)
	}
	return layers
}

// TestSharedBaseStoredOnce: two images built on the same base layers store
// those layers once, and df reports them as shared.
func TestSharedBaseStoredOnce(t *testing.T) {
	work := t.TempDir()
	root := filepath.Join(work, "store")
	layout := buildUmociImage(t, work, "a", func(r string) { writeFile(t, r+"/only-a", "a") })
	// Same base steps give the same first two layers (umoci's tars are
	// deterministic for the same tree and times); tag b differs on top.
	os.RemoveAll(layout)
	layoutA := buildUmociImage(t, filepath.Join(work, "A"), "a", func(r string) { writeFile(t, r+"/only-a", "a") })
	ia, err := Import(root, layoutA, ImportOptions{Name: "shared:a"})
	if err != nil {
		t.Fatal(err)
	}
	// Image b: image a plus one layer, committed from a container.
	s, err := Open(root)
	if err != nil {
		t.Fatal(err)
	}
	c, err := s.CreateContainer("shared:a", "")
	s.Close()
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, c.Upper+"/only-b", strings.Repeat("b", 5000))
	if _, err := Commit(root, c.ID, "shared:b", CommitOptions{}); err != nil {
		t.Fatal(err)
	}
	s = mustOpen(t, root)
	u, err := s.DiskUsage()
	if err != nil {
		t.Fatal(err)
	}
	layerDirs, _ := os.ReadDir(filepath.Join(root, layersDirName))
	if u.Layers != 4 || len(layerDirs) != 4 {
		t.Fatalf("2 images of 3+4 layers sharing 3: store has %d layer records and %d dirs, want 4", u.Layers, len(layerDirs))
	}
	for _, iu := range u.Images {
		if iu.Shared != u.LayersSize-5000 {
			t.Errorf("image %v: shared %d, want %d", iu.Names, iu.Shared, u.LayersSize-5000)
		}
	}
	if u.ImagesSize <= u.LayersSize {
		t.Errorf("images total %d should exceed stored %d", u.ImagesSize, u.LayersSize)
	}
	_ = ia
	// rmi of b keeps a's layers; rmi of a refuses while a container uses it.
	if _, err := s.RemoveImage("shared:b", false); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RemoveImage("shared:a", false); err == nil {
		t.Fatal("rmi of an image a container uses succeeded")
	}
	if err := s.RemoveContainer(c.ID, false); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RemoveImage("shared:a", false); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = mustOpen(t, root)
	layers, _ := s.Layers()
	if len(layers) != 0 {
		t.Errorf("%d layers left after removing every image", len(layers))
	}
}
