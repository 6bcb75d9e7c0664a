package layerdb

import (
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
)

// TestImportCompressedArchives: "docker save | gzip" and its kin. A docker
// archive and an OCI archive written by skopeo, compressed by gzip and
// zstd, import as the same multi-layer image as uncompressed (same DiffIDs,
// name from the archive), not as a one-layer root filesystem, and leave no
// work directory behind.
func TestImportCompressedArchives(t *testing.T) {
	work := t.TempDir()
	layout := buildUmociImage(t, work, "v1", nil)
	docker := filepath.Join(work, "docker.tar")
	run(t, "skopeo", "copy", "--quiet", "oci:"+layout+":v1", "docker-archive:"+docker+":example.com/comp:v1")
	oci := filepath.Join(work, "oci.tar")
	run(t, "skopeo", "copy", "--quiet", "oci:"+layout+":v1", "oci-archive:"+oci+":example.com/comp:v1")
	want := importedDiffIDs(t, docker, "")
	if len(want) != 3 {
		t.Fatalf("uncompressed docker archive imported with %d layers, want 3", len(want))
	}
	for _, src := range []string{docker, oci} {
		for _, compressed := range []string{gzipFile(t, src), zstdFile(t, src)} {
			got := importedDiffIDs(t, compressed, "example.com/comp:v1")
			if !slices.Equal(got, want) {
				t.Errorf("%s: DiffIDs %v, want %v", filepath.Base(compressed), got, want)
			}
		}
	}
}

// gzipFile compresses src with gzip(1), as "docker save | gzip" does, and
// returns the .gz file.
func gzipFile(t *testing.T, src string) string {
	t.Helper()
	run(t, "gzip", "-k", "-f", src)
	return src + ".gz"
}

// zstdFile compresses src with the zstd encoder strata's layers use (the
// zstd(1) tool is not part of a base Debian), and returns the .zst file.
func zstdFile(t *testing.T, src string) string {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(src + ".zst")
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	zw, err := zstd.NewWriter(out)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(zw, in); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Name()
}

// importedDiffIDs imports src into a fresh store and returns the DiffIDs of
// the one image it holds; with wantName, the image must carry that name.
func importedDiffIDs(t *testing.T, src, wantName string) []digest.Digest {
	t.Helper()
	root := filepath.Join(t.TempDir(), "store")
	images, err := Import(root, src, ImportOptions{})
	if err != nil {
		t.Fatalf("import %s: %v", filepath.Base(src), err)
	}
	if len(images) != 1 {
		t.Fatalf("import %s: %d images, want 1", filepath.Base(src), len(images))
	}
	if wantName != "" && !slices.Contains(images[0].Names, wantName) {
		t.Errorf("import %s: names %v, want %s", filepath.Base(src), images[0].Names, wantName)
	}
	if entries, _ := os.ReadDir(filepath.Join(root, tmpDirName)); len(entries) != 0 {
		t.Errorf("import %s left %d work directories", filepath.Base(src), len(entries))
	}
	return diffIDsOf(t, root, images[0].ID.String())
}

// TestImportCompressedRootfsStaysRootfs: a gzipped root filesystem tar whose
// top holds a manifest.json (beside bin/ and etc/) is still one layer, with
// every file in it.
func TestImportCompressedRootfsStaysRootfs(t *testing.T) {
	work := t.TempDir()
	tree := filepath.Join(work, "tree")
	writeFile(t, tree+"/manifest.json", "[]")
	writeFile(t, tree+"/bin/sh", "#!")
	writeFile(t, tree+"/etc/os-release", "ID=x\n")
	tgz := filepath.Join(work, "rootfs.tar.gz")
	run(t, "tar", "-czf", tgz, "-C", tree, ".")
	root := filepath.Join(work, "store")
	images, err := Import(root, tgz, ImportOptions{Name: "rootfs:gz"})
	if err != nil {
		t.Fatal(err)
	}
	if len(images) != 1 || len(images[0].Layers) != 1 {
		t.Fatalf("gzipped rootfs imported as %d images, first with %d layers; want 1 with 1", len(images), len(images[0].Layers))
	}
	s := mustOpen(t, root)
	l, err := s.Layer(images[0].Layers[0].String())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"manifest.json", "bin/sh", "etc/os-release"} {
		if _, err := os.Lstat(filepath.Join(l.Dir, p)); err != nil {
			t.Errorf("rootfs layer lacks %s: %v", p, err)
		}
	}
}
