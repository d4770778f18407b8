package fleetinstall

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

var (
	binsOnce sync.Once
	bins     map[string][]byte
	binsErr  error
)

// staticBinaries builds a small static Go program for linux/amd64 and
// arm64: real ELF executables the image is built from, as make build's
// controller would be.
func staticBinaries(t *testing.T) map[string][]byte {
	t.Helper()
	binsOnce.Do(func() {
		dir, err := os.MkdirTemp("", "fleetinstall-bin-")
		if err != nil {
			binsErr = err
			return
		}
		defer os.RemoveAll(dir)
		src := filepath.Join(dir, "main.go")
		if binsErr = os.WriteFile(src, []byte("package main\n\nfunc main() { println(\"controller\") }\n"), 0o644); binsErr != nil {
			return
		}
		bins = map[string][]byte{}
		for _, arch := range []string{"amd64", "arm64"} {
			out := filepath.Join(dir, arch)
			cmd := exec.Command("go", "build", "-trimpath", "-o", out, src)
			cmd.Dir = dir
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch, "GO111MODULE=off")
			if b, err := cmd.CombinedOutput(); err != nil {
				binsErr = errors.New(string(b))
				return
			}
			if bins[arch], binsErr = os.ReadFile(out); binsErr != nil {
				return
			}
		}
	})
	if binsErr != nil {
		t.Fatalf("build the test binaries: %v", binsErr)
	}
	return bins
}

// files reads an image's flattened filesystem: path -> header and content.
func files(t *testing.T, img v1.Image) (map[string]*tar.Header, map[string][]byte) {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	hdrs, data := map[string]*tar.Header{}, map[string][]byte{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		p := "/" + strings.Trim(h.Name, "/")
		hdrs[p] = h
		data[p], _ = io.ReadAll(tr)
	}
	return hdrs, data
}

// The image, read back from the archive ctr imports and from an OCI
// layout: per architecture, the config's user, entrypoint and platform,
// and the layer's binary, users, CA bundle and modes.
func TestImageReadBack(t *testing.T) {
	b := staticBinaries(t)
	im, err := Build(b)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(im.Tag, "sha-") || len(im.Tag) != 20 {
		t.Errorf("tag %q: want sha- and 16 hex digits", im.Tag)
	}
	for _, arch := range []string{"amd64", "arm64"} {
		tb, err := im.Tarball(arch)
		if err != nil {
			t.Fatal(err)
		}
		tag, _ := name.NewTag(im.LocalRef())
		img, err := tarball.Image(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(tb)), nil }, &tag)
		if err != nil {
			t.Fatalf("%s: read the archive back under %s: %v", arch, im.LocalRef(), err)
		}
		cfg, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if cfg.OS != "linux" || cfg.Architecture != arch {
			t.Errorf("%s: platform %s/%s", arch, cfg.OS, cfg.Architecture)
		}
		if cfg.Config.User != "65532:65532" {
			t.Errorf("%s: user %q, want 65532:65532 (nonroot)", arch, cfg.Config.User)
		}
		if strings.Join(cfg.Config.Entrypoint, " ") != BinaryPath || len(cfg.Config.Cmd) != 0 {
			t.Errorf("%s: entrypoint %q cmd %q, want %s alone", arch, cfg.Config.Entrypoint, cfg.Config.Cmd, BinaryPath)
		}
		layers, _ := img.Layers()
		if len(layers) != 1 {
			t.Errorf("%s: %d layers, want 1", arch, len(layers))
		}
		hdrs, data := files(t, img)
		if !bytes.Equal(data[BinaryPath], b[arch]) {
			t.Errorf("%s: %s is not the %s binary given (%d bytes, want %d)", arch, BinaryPath, arch, len(data[BinaryPath]), len(b[arch]))
		}
		if h := hdrs[BinaryPath]; h == nil || h.Mode&0o7777 != 0o755 || h.Uid != 0 {
			t.Errorf("%s: binary header %+v, want root-owned 0755 (the nonroot user cannot replace it)", arch, h)
		}
		if !strings.Contains(string(data["/etc/passwd"]), "nonroot:x:65532:65532:") || !strings.Contains(string(data["/etc/group"]), "nonroot:x:65532:") {
			t.Errorf("%s: /etc/passwd %q /etc/group %q: want the nonroot user 65532", arch, data["/etc/passwd"], data["/etc/group"])
		}
		if h := hdrs["/tmp"]; h == nil || h.Mode&0o7777 != 0o1777 {
			t.Errorf("%s: /tmp %+v, want 1777", arch, h)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(data[CertsPath]) {
			t.Fatalf("%s: %s holds no certificate", arch, CertsPath)
		}
		n := 0
		for rest := data[CertsPath]; ; n++ {
			var blk *pem.Block
			if blk, rest = pem.Decode(rest); blk == nil {
				break
			}
			if _, err := x509.ParseCertificate(blk.Bytes); err != nil {
				t.Errorf("%s: certificate %d: %v", arch, n, err)
			}
		}
		if n < 100 {
			t.Errorf("%s: %d roots in %s, want Mozilla's (over 100)", arch, n, CertsPath)
		}
		for p, h := range hdrs {
			if !h.ModTime.Equal(epoch) {
				t.Errorf("%s: %s has time %v, want the fixed epoch", arch, p, h.ModTime)
			}
		}
	}

	// The index, as an OCI layout on disk, names both platforms.
	dir := t.TempDir()
	if _, err := layout.Write(dir, im.Index); err != nil {
		t.Fatal(err)
	}
	lp, err := layout.FromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := lp.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range m.Manifests {
		got = append(got, d.Platform.String())
	}
	if strings.Join(got, " ") != "linux/amd64 linux/arm64" {
		t.Errorf("index platforms %v, want linux/amd64 linux/arm64", got)
	}

	// Reproducible: the same binaries are the same tag; another binary is another.
	again, err := Build(b)
	if err != nil || again.Tag != im.Tag {
		t.Errorf("rebuilt: tag %q, %v; want %q", again.Tag, err, im.Tag)
	}
	other, err := Build(map[string][]byte{"amd64": append(bytes.Clone(b["amd64"]), 0)})
	if err != nil || other.Tag == im.Tag {
		t.Errorf("another binary: tag %q, %v; want one other than %q", other.Tag, err, im.Tag)
	}
	if _, err := other.Tarball("arm64"); err == nil || !strings.Contains(err.Error(), "no controller image for linux/arm64 (built for amd64)") {
		t.Errorf("tarball of an architecture not built: %v", err)
	}
}

func TestBuildRefusesWhatWouldNotRun(t *testing.T) {
	b := staticBinaries(t)
	for _, c := range []struct {
		name string
		bins map[string][]byte
		want string
	}{
		{"none", nil, "no controller binary"},
		{"other arch", map[string][]byte{"arm64": b["amd64"]}, "is built for EM_X86_64: build it with GOARCH=arm64"},
		{"not ELF", map[string][]byte{"amd64": []byte("#!/bin/sh\n")}, "is not a Linux executable"},
		{"unknown arch", map[string][]byte{"riscv64": b["amd64"]}, "only amd64 and arm64"},
	} {
		if _, err := Build(c.bins); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want an error containing %q", c.name, err, c.want)
		}
	}
	// A dynamically linked executable of this machine's (the image has no libc).
	if runtime.GOOS == "linux" {
		sh, err := os.ReadFile("/bin/sh")
		if err == nil && bytes.Contains(sh, []byte("ld-linux")) {
			if _, err := Build(map[string][]byte{runtime.GOARCH: sh}); err == nil || !strings.Contains(err.Error(), "dynamically linked") {
				t.Errorf("/bin/sh: got %v, want dynamically linked refused", err)
			}
		}
	}
}

// Push to a real registry (go-containerregistry's, in-process): the
// index with both platforms under the tag, the Deployment's reference by
// digest, and a second push that sends nothing.
func TestPushToARegistry(t *testing.T) {
	var mu sync.Mutex
	var writes int
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(httpCounter(reg, func(method string) {
		if method == "PUT" || method == "POST" || method == "PATCH" {
			mu.Lock()
			writes++
			mu.Unlock()
		}
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")

	im, err := Build(staticBinaries(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	repo := host + "/team/meshvm-controller"
	p, err := Push(ctx, repo, im)
	if err != nil {
		t.Fatal(err)
	}
	d, _ := im.Index.Digest()
	if p.Action != "pushed" || p.Ref != repo+"@"+d.String() {
		t.Errorf("push: %+v, want pushed as %s@%s", p, repo, d)
	}
	ref, _ := name.ParseReference(p.Ref)
	for _, arch := range []string{"amd64", "arm64"} {
		img, err := remote.Image(ref, remote.WithPlatform(v1.Platform{OS: "linux", Architecture: arch}))
		if err != nil {
			t.Fatalf("pull %s for %s: %v", p.Ref, arch, err)
		}
		cfg, _ := img.ConfigFile()
		if cfg.Architecture != arch || cfg.Config.User != "65532:65532" {
			t.Errorf("pulled %s: arch %s user %s", arch, cfg.Architecture, cfg.Config.User)
		}
	}
	tagged, _ := name.NewTag(repo + ":" + im.Tag)
	if desc, err := remote.Head(tagged); err != nil || desc.Digest != d {
		t.Errorf("tag %s: %v, %v; want the index %s", tagged, desc, err, d)
	}

	mu.Lock()
	before := writes
	mu.Unlock()
	again, err := Push(ctx, repo, im)
	if err != nil || again.Action != "unchanged" || again.Ref != p.Ref {
		t.Errorf("second push: %+v, %v; want unchanged at %s", again, err, p.Ref)
	}
	mu.Lock()
	if writes != before {
		t.Errorf("second push wrote %d times, want none", writes-before)
	}
	mu.Unlock()

	if _, err := Push(ctx, "Not A Repo!", im); err == nil || !strings.Contains(err.Error(), "give it as registry/repository") {
		t.Errorf("bad repository: %v", err)
	}
}

// httpCounter tells count each request's method before h serves it.
func httpCounter(h http.Handler, count func(method string)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		count(r.Method)
		h.ServeHTTP(w, r)
	})
}
