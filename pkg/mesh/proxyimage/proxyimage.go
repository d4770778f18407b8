// Package proxyimage takes the sidecar's files (envoy, pilot-agent and
// Envoy's bootstrap template) out of the istio/proxyv2 image for a VM's
// architecture, straight from the registry with go-containerregistry (no
// docker or podman), and keeps them cached by image digest: amd64 and arm64
// VMs alike get the files of the very proxy istiod was released with. A
// local istio-sidecar .deb can stand in for the image (FromDeb).
package proxyimage

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Files maps the image's paths to the names the cache keeps them under.
var Files = map[string]string{
	"usr/local/bin/envoy":                           "envoy",
	"usr/local/bin/pilot-agent":                     "pilot-agent",
	"var/lib/istio/envoy/envoy_bootstrap_tmpl.json": "envoy_bootstrap_tmpl.json",
}

// Image is where the proxy comes from: hub/proxyv2:tag.
func Image(hub, tag string) string { return strings.TrimSuffix(hub, "/") + "/proxyv2:" + tag }

// Sidecar is one architecture's extracted files.
type Sidecar struct {
	// Dir holds the files under the names in Files.
	Dir string
	// Digest is the platform image's digest; Cached says no layer was pulled.
	Digest string
	Cached bool
}

// Path returns the path of one of the files, by its cache name.
func (s Sidecar) Path(file string) string { return filepath.Join(s.Dir, file) }

// Fetcher pulls and caches.
type Fetcher struct {
	// CacheDir keeps one directory per image digest.
	CacheDir string
	// Remote options: authentication, transport (tests use a local registry).
	Options []remote.Option
}

// Fetch returns the sidecar files of ref for linux/arch, pulling the
// image's layers only when that digest is not cached yet.
func (f *Fetcher) Fetch(ctx context.Context, ref, arch string) (Sidecar, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return Sidecar{}, fmt.Errorf("proxy image %q: %w: give it as registry/repository:tag", ref, err)
	}
	opts := append([]remote.Option{remote.WithContext(ctx), remote.WithPlatform(v1.Platform{OS: "linux", Architecture: arch})}, f.Options...)
	img, err := remote.Image(r, opts...)
	if err != nil {
		return Sidecar{}, fmt.Errorf("proxy image %s for linux/%s: %w (is the tag published for that architecture, and the registry reachable?)", ref, arch, err)
	}
	digest, err := img.Digest()
	if err != nil {
		return Sidecar{}, fmt.Errorf("proxy image %s: %w", ref, err)
	}
	platform := "linux/" + arch
	dir := filepath.Join(f.CacheDir, "proxyv2", digest.Algorithm+"-"+digest.Hex)
	s := Sidecar{Dir: dir, Digest: digest.String()}
	if complete(dir, platform) {
		s.Cached = true
		return s, nil
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return Sidecar{}, fmt.Errorf("proxy image %s: %w", ref, err)
	}
	// A single-platform image is returned whatever its platform: check it.
	if cfg.OS != "linux" || cfg.Architecture != arch {
		return Sidecar{}, fmt.Errorf("proxy image %s is %s/%s, the VM is %s: use a multi-architecture tag", ref, cfg.OS, cfg.Architecture, platform)
	}
	if err := extract(img, dir, platform); err != nil {
		return Sidecar{}, fmt.Errorf("proxy image %s (%s): %w", ref, platform, err)
	}
	return s, nil
}

// marker records the platform a cache entry was checked for.
const marker = ".complete"

func complete(dir, platform string) bool {
	for _, n := range Files {
		if _, err := os.Stat(filepath.Join(dir, n)); err != nil {
			return false
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, marker))
	return err == nil && string(b) == platform
}

// extract writes the files of the image's flattened filesystem (whiteouts
// applied) into a temporary directory, synced, then renames it into place:
// an interrupted pull leaves no half-filled cache entry.
func extract(img v1.Image, dir, platform string) error {
	rc := mutate.Extract(img)
	defer rc.Close()
	return extractTar(rc, dir, platform, "is it an istio/proxyv2 image?")
}

// extractTar takes Files out of a tar stream into dir (through a synced
// temporary directory renamed into place); what names the source when a
// file is missing.
func extractTar(r io.Reader, dir, platform, what string) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".pull-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	tr := tar.NewReader(r)
	found := map[string]bool{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("read files: %w", err)
		}
		want, ok := Files[strings.TrimPrefix(path.Clean("/"+h.Name), "/")]
		if !ok || h.Typeflag != tar.TypeReg {
			continue
		}
		if err := writeFile(filepath.Join(tmp, want), tr, fs.FileMode(h.Mode).Perm()|0o400); err != nil {
			return err
		}
		found[want] = true
	}
	var missing []string
	for p, n := range Files {
		if !found[n] {
			missing = append(missing, "/"+p)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return fmt.Errorf("it lacks %s: %s", strings.Join(missing, ", "), what)
	}
	if err := writeFile(filepath.Join(tmp, marker), strings.NewReader(platform), 0o644); err != nil {
		return err
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	// Another pull of the same digest may have won: theirs is as good.
	if err := os.Rename(tmp, dir); err != nil && !complete(dir, platform) {
		return err
	}
	return nil
}

func writeFile(p string, r io.Reader, mode fs.FileMode) error {
	f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
