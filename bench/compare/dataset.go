package main

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/strata-fs/strata/bench/fixture"
	"github.com/strata-fs/strata/bench/target"
)

// datasetVersion is written into each part's completion marker; change it
// when the data set's recipe changes so old caches are rebuilt.
const datasetVersion = "strata-bench data set v2\n"

// Sizes of the standard data set.
const (
	// hostEntries host files and directories go into the image; whiteouts
	// and the opaque directory hide about 1,700 of them, leaving a merged
	// view of about 50,000 entries.
	hostEntries      = 51_700
	imageLayerCount  = 5
	maxCopiedFile    = 256 << 10 // larger host files are left out
	bigFileSize      = 1 << 30
	deepLayers       = 1000
	deepBottomFiles  = 100_000
	smallTarFiles    = 10_000
	smallTarFileSize = 4 << 10
	wideDirs         = 1000
	wideFilesPerDir  = 999 // with the directories: 1,000,000 entries
)

// Paths of the two 1 GiB files, relative to the image root.
const (
	bigFileA = "big/random-a.bin"
	bigFileB = "big/random-b.bin"
)

// dataset locates the parts of the standard data set in the cache.
type dataset struct {
	imageDir   string
	deepDir    string
	wideDir    string
	tarDir     string
	smallTar   string
	includeTar string
}

func newDataset(cache string) dataset {
	d := dataset{
		imageDir: filepath.Join(cache, "image"),
		deepDir:  filepath.Join(cache, "deep"),
		wideDir:  filepath.Join(cache, "wide"),
		tarDir:   filepath.Join(cache, "tars"),
	}
	d.smallTar = filepath.Join(d.tarDir, "small.tar")
	d.includeTar = filepath.Join(d.tarDir, "include.tar")
	return d
}

// imageLayers lists the 5-layer image's layers, topmost first.
func (d dataset) imageLayers() []string { return imageLayersUnder(d.imageDir) }

func imageLayersUnder(dir string) []string {
	var layers []string
	for i := imageLayerCount - 1; i >= 0; i-- {
		layers = append(layers, filepath.Join(dir, "layers", fmt.Sprint(i)))
	}
	return layers
}

// imageMerged is the image's union view copied to a plain directory.
func (d dataset) imageMerged() string { return filepath.Join(d.imageDir, "merged") }

// deepStack lists a deep stack's layers, topmost first.
func (d dataset) deepStack(depth int) []string {
	return fixture.DeepStack(filepath.Join(d.deepDir, "layers"), depth)
}

// deepBottom is a deep stack's bottom layer, the plain-directory baseline
// for lookups in it.
func (d dataset) deepBottom() string {
	return fixture.DeepLayerDir(filepath.Join(d.deepDir, "layers"), 0)
}

// wideLayers is the stack of the 1,000,000-entry tree, topmost first.
func (d dataset) wideLayers() []string {
	return []string{filepath.Join(d.wideDir, "layers", "1"), d.wideBottom()}
}

// wideBottom holds the 1,000,000 entries; the plain baseline walks it.
func (d dataset) wideBottom() string { return filepath.Join(d.wideDir, "layers", "0") }

// build makes the missing parts of the data set that the stacks in need
// use. Cancelling ctx stops the image and wide-tree builds between files
// (and the image build's one mount is taken down); the other parts take
// seconds.
func (d dataset) build(ctx context.Context, logf func(string, ...any), need map[stack]bool) error {
	parts := []struct {
		name  string
		dir   string
		used  bool
		build func(string) error
	}{
		{"5-layer image", d.imageDir, need[imageStack], func(tmp string) error { return buildImage(ctx, tmp) }},
		{"deep stacks", d.deepDir, need[deep128] || need[deep1000], func(tmp string) error {
			return fixture.WriteDeepLayers(filepath.Join(tmp, "layers"), deepLayers, deepBottomFiles)
		}},
		{"tar archives", d.tarDir, need[imageStack], buildTars},
		{"1,000,000-entry tree", d.wideDir, need[wideStack], func(tmp string) error { return buildWideTree(ctx, tmp) }},
	}
	for _, p := range parts {
		if !p.used || fixture.IsComplete(p.dir, datasetVersion) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("data set: %w", err)
		}
		logf("building %s in %s ...", p.name, p.dir)
		start := time.Now()
		if err := fixture.BuildOnce(p.dir, datasetVersion, p.build); err != nil {
			return err
		}
		logf("built %s in %v", p.name, time.Since(start).Round(time.Second))
	}
	return nil
}

// hostFile is a file or symlink of the host chosen for the image.
type hostFile struct {
	src  string // absolute path on the host
	rel  string // path inside the image
	hash uint64 // decides layer, overwrite and whiteout
}

func pathHash(s string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(s))
	return h.Sum64()
}

// buildImage writes the 5-layer image: host files from /usr/share and
// /usr/lib spread over the layers, later layers overwriting and whiting out
// earlier files and making one directory opaque, two 1 GiB files of random
// data in the base layer, and the merged view as a plain directory.
func buildImage(ctx context.Context, tmp string) error {
	files, err := chooseHostFiles([]string{"/usr/share", "/usr/lib"}, hostEntries)
	if err != nil {
		return err
	}
	layers := make([]fixture.Layer, imageLayerCount)
	for i := range layers {
		layers[i] = fixture.Layer{Root: filepath.Join(tmp, "layers", fmt.Sprint(i))}
		if err := layers[i].MkdirAll("."); err != nil {
			return err
		}
	}
	home := make(map[string]int, len(files)) // rel -> layer that adds it
	for _, f := range files {
		if err := ctx.Err(); err != nil {
			return err
		}
		home[f.rel] = layerOf(f.hash)
		if err := copyHostFile(f.src, layers[home[f.rel]].Path(f.rel)); err != nil {
			return err
		}
	}
	opaque, err := chooseOpaqueDir(files)
	if err != nil {
		return err
	}
	overwrites, whiteouts, err := overwriteAndWhiteout(files, home, layers, opaque)
	if err != nil {
		return err
	}
	if err := writeFact(tmp, "overwrites", overwrites); err != nil {
		return err
	}
	if err := writeFact(tmp, "whiteouts", whiteouts); err != nil {
		return err
	}
	if err := makeOpaqueDir(layers[imageLayerCount-1], opaque); err != nil {
		return err
	}
	for i, name := range []string{bigFileA, bigFileB} {
		if err := layers[0].WriteRandomFile(name, bigFileSize, uint64(i+1)); err != nil {
			return err
		}
	}
	return copyMergedView(ctx, tmp)
}

// layerOf spreads files: 60% in the base layer, 10% in each later one.
func layerOf(h uint64) int {
	if n := int(h % 10); n >= 6 {
		return n - 5
	}
	return 0
}

// chooseHostFiles picks, in a fixed pseudo-random order, regular files of
// at most maxCopiedFile bytes and symlinks under roots until files plus
// the directories that hold them reach entries.
func chooseHostFiles(roots []string, entries int) ([]hostFile, error) {
	var all []hostFile
	for _, root := range roots {
		err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
			if err != nil {
				return nil // unreadable host paths are simply left out
			}
			if !e.Type().IsRegular() && e.Type()&fs.ModeSymlink == 0 {
				return nil
			}
			if info, err := e.Info(); err != nil || info.Size() > maxCopiedFile {
				return nil
			}
			rel := strings.TrimPrefix(p, "/")
			all = append(all, hostFile{src: p, rel: rel, hash: pathHash(rel)})
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("walk %s: %w", root, err)
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].hash < all[j].hash })
	dirs := map[string]bool{}
	for i, f := range all {
		for d := filepath.Dir(f.rel); d != "." && !dirs[d]; d = filepath.Dir(d) {
			dirs[d] = true
		}
		if i+1+len(dirs) >= entries {
			chosen := all[:i+1]
			sort.Slice(chosen, func(i, j int) bool { return chosen[i].rel < chosen[j].rel })
			return chosen, nil
		}
	}
	return nil, fmt.Errorf("the host has only %d files under %v, fewer than %d entries", len(all), roots, entries)
}

func copyHostFile(src, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	info, err := os.Lstat(src)
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	if info.Mode()&fs.ModeSymlink != 0 {
		link, err := os.Readlink(src)
		if err != nil {
			return fmt.Errorf("copy %s: %w", src, err)
		}
		if err := os.Symlink(link, dst); err != nil {
			return fmt.Errorf("copy %s: %w", src, err)
		}
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, info.Mode().Perm())
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", src, err)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return nil
}

// overwriteAndWhiteout lets later layers change earlier files: about 3% of
// regular files get new content in a higher layer, about 2% of entries are
// whited out in a higher layer still. The top layer writes no whiteouts
// inside the directory it makes opaque: kernel overlayfs lists those as
// entries (an opaque directory of the top layer is not merged, so its
// whiteouts are not filtered) while lookups of them fail.
func overwriteAndWhiteout(files []hostFile, home map[string]int, layers []fixture.Layer, opaque string) (overwrites, whiteouts int, err error) {
	for _, f := range files {
		top := home[f.rel]
		if h := pathHash(f.rel + "#overwrite"); h%100 < 3 {
			if l := 1 + int(h/100%4); l > top {
				info, err := os.Lstat(f.src)
				if err == nil && info.Mode().IsRegular() {
					data := fmt.Appendf(nil, "overwritten in layer %d: %s\n", l, f.rel)
					if err := layers[l].WriteFile(f.rel, data, info.Mode().Perm()); err != nil {
						return 0, 0, err
					}
					top = l
					overwrites++
				}
			}
		}
		if h := pathHash(f.rel + "#whiteout"); h%100 < 2 {
			l := 2 + int(h/100%3)
			if l == imageLayerCount-1 && strings.HasPrefix(f.rel, opaque+"/") {
				l = 0 // not in the opaque directory; see above
			}
			if l > top {
				if err := layers[l].Whiteout(f.rel); err != nil {
					return 0, 0, err
				}
				whiteouts++
			}
		}
	}
	return overwrites, whiteouts, nil
}

// writeFact records a number about the data set for the report.
func writeFact(dir, name string, n int) error {
	if err := os.WriteFile(filepath.Join(dir, name), fmt.Appendf(nil, "%d\n", n), 0o644); err != nil {
		return fmt.Errorf("data set facts: %w", err)
	}
	return nil
}

// chooseOpaqueDir picks the first directory (in name order) holding 200 to
// 2,000 of the image's files.
func chooseOpaqueDir(files []hostFile) (string, error) {
	count := map[string]int{}
	for _, f := range files {
		for d := filepath.Dir(f.rel); d != "."; d = filepath.Dir(d) {
			count[d]++
		}
	}
	var dirs []string
	for d, n := range count {
		if n >= 200 && n <= 2000 {
			dirs = append(dirs, d)
		}
	}
	if len(dirs) == 0 {
		return "", errors.New("no directory of 200 to 2,000 files to make opaque")
	}
	sort.Strings(dirs)
	return dirs[0], nil
}

// makeOpaqueDir marks dir opaque in the top layer and puts ten files of its
// own into it.
func makeOpaqueDir(top fixture.Layer, dir string) error {
	if err := top.MakeOpaque(dir); err != nil {
		return err
	}
	for i := range 10 {
		name := filepath.Join(dir, fmt.Sprintf("opaque-layer-file-%d", i))
		if err := top.WriteFile(name, []byte("only this layer's files show here\n"), 0o644); err != nil {
			return err
		}
	}
	return os.WriteFile(filepath.Join(top.Root, "..", "..", "opaque-dir"), []byte(dir+"\n"), 0o644)
}

// copyMergedView mounts the layers with kernel overlayfs, read-only, and
// copies the union view to tmp/merged: the plain-directory baseline.
func copyMergedView(ctx context.Context, tmp string) error {
	mnt := filepath.Join(tmp, "mnt")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return fmt.Errorf("merged view: %w", err)
	}
	m, err := target.New(target.Overlayfs, target.Spec{Lowers: imageLayersUnder(tmp), Dir: mnt}, target.Binaries{}, nil)
	if err != nil {
		return fmt.Errorf("merged view: %w", err)
	}
	out, cpErr := exec.CommandContext(ctx, "cp", "-a", mnt+"/.", filepath.Join(tmp, "merged")).CombinedOutput()
	if err := m.Unmount(); err != nil {
		return fmt.Errorf("merged view: %w", err)
	}
	if cpErr != nil {
		return fmt.Errorf("merged view: cp -a: %w: %s", cpErr, out)
	}
	if err := os.Remove(mnt); err != nil {
		return fmt.Errorf("merged view: %w", err)
	}
	entries := -1 // the root itself does not count
	err = filepath.WalkDir(filepath.Join(tmp, "merged"), func(string, fs.DirEntry, error) error {
		entries++
		return nil
	})
	if err != nil {
		return fmt.Errorf("count merged entries: %w", err)
	}
	return writeFact(tmp, "entries", entries)
}

// buildTars writes small.tar (10,000 files of 4 KiB in 100 directories)
// and include.tar (the host's /usr/include).
func buildTars(tmp string) error {
	if err := writeSmallFilesTar(filepath.Join(tmp, "small.tar")); err != nil {
		return err
	}
	out, err := exec.Command("tar", "-C", "/usr", "-cf", filepath.Join(tmp, "include.tar"), "include").CombinedOutput()
	if err != nil {
		return fmt.Errorf("tar /usr/include: %w: %s", err, out)
	}
	return nil
}

func writeSmallFilesTar(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("small tar: %w", err)
	}
	tw := tar.NewWriter(f)
	data := fixture.RandomBytes(smallTarFiles*smallTarFileSize, 7)
	now := time.Now()
	for i := range smallTarFiles {
		if i%100 == 0 {
			hdr := &tar.Header{Typeflag: tar.TypeDir, Name: fmt.Sprintf("small/d%02d/", i/100), Mode: 0o755, ModTime: now}
			if err := tw.WriteHeader(hdr); err != nil {
				return fmt.Errorf("small tar: %w", err)
			}
		}
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("small/d%02d/f%05d", i/100, i), Mode: 0o644, Size: smallTarFileSize, ModTime: now}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("small tar: %w", err)
		}
		if _, err := tw.Write(data[i*smallTarFileSize : (i+1)*smallTarFileSize]); err != nil {
			return fmt.Errorf("small tar: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("small tar: %w", err)
	}
	return f.Close()
}

// buildWideTree writes a 2-layer stack whose bottom layer holds 1,000
// directories of 999 empty files each, and whose top layer holds one file.
func buildWideTree(ctx context.Context, tmp string) error {
	bottom := fixture.Layer{Root: filepath.Join(tmp, "layers", "0")}
	top := fixture.Layer{Root: filepath.Join(tmp, "layers", "1")}
	if err := top.WriteFile("top-layer-file", []byte("top\n"), 0o644); err != nil {
		return err
	}
	for d := range wideDirs {
		if err := ctx.Err(); err != nil {
			return err
		}
		dir := fmt.Sprintf("w%03d", d)
		if err := bottom.MkdirAll(dir); err != nil {
			return err
		}
		for f := range wideFilesPerDir {
			if err := bottom.WriteFile(fmt.Sprintf("%s/f%03d", dir, f), nil, 0o644); err != nil {
				return err
			}
		}
	}
	return nil
}
