// Package fleetinstall runs fleet mode's controller on a real cluster: its
// image built in Go from the static binary (go-containerregistry, no
// docker), loaded into k3s's containerd through the machine provider or
// pushed to a registry the user names, and its manifests (namespace,
// least-privilege RBAC, the MeshVM CRD, a Deployment) rendered in Go and
// server-side applied; uninstall removes only what carries meshvm's mark.
package fleetinstall

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"encoding/pem"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/crypto/x509roots/fallback/bundle"
)

// The image's layout: one layer, as distroless's static image has it.
const (
	BinaryPath = "/usr/local/bin/meshvm-controller"
	CertsPath  = "/etc/ssl/certs/ca-certificates.crt"
	// UID and GID are the user the controller runs as (distroless's nonroot).
	UID = 65532
	GID = 65532
	// LocalRepo names the image loaded into k3s's containerd: a name no
	// registry serves, so a node without it fails with ErrImageNeverPull
	// and never pulls someone else's image of that name.
	LocalRepo = "meshvm.local/meshvm-controller"
)

// Image is the controller's image for each architecture built, and their
// index.
type Image struct {
	ByArch map[string]v1.Image
	Index  v1.ImageIndex
	// Tag is derived from the index's digest: a new binary is a new tag,
	// so the Deployment rolls, and the same binary is the same tag, so a
	// second install changes nothing.
	Tag string
}

// Arches are the architectures built, sorted.
func (im Image) Arches() []string { return slices.Sorted(maps.Keys(im.ByArch)) }

// Build makes the image from the static controller binary of each
// architecture (GOARCH -> ELF): the binary, /etc/passwd and /etc/group
// naming the nonroot user, and Mozilla's root certificates (Go's x509roots
// bundle) where Go looks for them. Every timestamp is fixed, so the same
// binaries give the same digests on every workstation.
func Build(bins map[string][]byte) (Image, error) {
	if len(bins) == 0 {
		return Image{}, fmt.Errorf("no controller binary to build the image from")
	}
	im := Image{ByArch: map[string]v1.Image{}}
	var adds []mutate.IndexAddendum
	for _, arch := range slices.Sorted(maps.Keys(bins)) {
		if err := checkBinary(bins[arch], arch); err != nil {
			return Image{}, err
		}
		img, err := archImage(bins[arch], arch)
		if err != nil {
			return Image{}, fmt.Errorf("controller image for linux/%s: %w", arch, err)
		}
		im.ByArch[arch] = img
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}}})
	}
	im.Index = mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex), adds...)
	d, err := im.Index.Digest()
	if err != nil {
		return Image{}, err
	}
	im.Tag = "sha-" + d.Hex[:16]
	return im, nil
}

// LocalRef is the reference the image is loaded under into k3s.
func (im Image) LocalRef() string { return LocalRepo + ":" + im.Tag }

var elfMachine = map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}

// checkBinary refuses what would not run in the image: another
// architecture's binary, or a dynamically linked one (the image has no libc).
func checkBinary(b []byte, arch string) error {
	want, ok := elfMachine[arch]
	if !ok {
		return fmt.Errorf("controller for linux/%s: only amd64 and arm64 are built", arch)
	}
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("controller for linux/%s is not a Linux executable (%v): build it with GOOS=linux GOARCH=%s (make build)", arch, err, arch)
	}
	defer f.Close()
	if f.Machine != want {
		return fmt.Errorf("controller for linux/%s is built for %s: build it with GOARCH=%s (make build)", arch, f.Machine, arch)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("controller for linux/%s is dynamically linked; the image has no libc: build it with CGO_ENABLED=0 (make build)", arch)
		}
	}
	return nil
}

// epoch is every file's and the config's time: reproducible digests.
var epoch = time.Unix(0, 0).UTC()

func archImage(bin []byte, arch string) (v1.Image, error) {
	files, err := rootfs(bin)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(files)), nil },
		tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	img, err := mutate.Append(mutate.MediaType(mutate.ConfigMediaType(empty.Image, types.OCIConfigJSON), types.OCIManifestSchema1),
		mutate.Addendum{Layer: layer, History: v1.History{Created: v1.Time{Time: epoch}, CreatedBy: "hostctl fleet install", Comment: "meshvm controller, CA certificates, nonroot user"}})
	if err != nil {
		return nil, err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture, cfg.Created = "linux", arch, v1.Time{Time: epoch}
	cfg.Config = v1.Config{
		User:       fmt.Sprintf("%d:%d", UID, GID),
		Entrypoint: []string{BinaryPath},
		WorkingDir: "/",
		Env:        []string{"PATH=/usr/local/bin:/usr/bin:/bin", "SSL_CERT_FILE=" + CertsPath},
		Labels: map[string]string{
			"org.opencontainers.image.title":  "meshvm-controller",
			"org.opencontainers.image.source": "https://github.com/meshvm/meshvm",
		},
	}
	return mutate.ConfigFile(img, cfg)
}

// rootfs is the layer's tar: directories, then files, with fixed owners,
// modes and times.
func rootfs(bin []byte) ([]byte, error) {
	certs := caBundle()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dir := func(name string, mode int64) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, ModTime: epoch, Format: tar.FormatPAX})
	}
	file := func(name string, mode int64, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data)), ModTime: epoch, Format: tar.FormatPAX}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	for _, d := range []string{"etc", "etc/ssl", "etc/ssl/certs", "usr", "usr/local", "usr/local/bin"} {
		if err := dir(d, 0o755); err != nil {
			return nil, err
		}
	}
	// /tmp: the controller caches the sidecar images it pulls there; the
	// Deployment mounts an emptyDir on it, the root filesystem being read-only.
	if err := dir("tmp", 0o1777); err != nil {
		return nil, err
	}
	passwd := fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n", UID, GID)
	group := fmt.Sprintf("root:x:0:\nnonroot:x:%d:\n", GID)
	for _, f := range []struct {
		name string
		mode int64
		data []byte
	}{
		{"etc/passwd", 0o644, []byte(passwd)},
		{"etc/group", 0o644, []byte(group)},
		{strings.TrimPrefix(CertsPath, "/"), 0o644, certs},
		{strings.TrimPrefix(BinaryPath, "/"), 0o755, bin},
	} {
		if err := file(f.name, f.mode, f.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// caBundle is Mozilla's roots as Go's x509roots module carries them, as
// PEM. Roots with a constraint a PEM file cannot express (distrust after a
// date) are left out rather than trusted without it.
func caBundle() []byte {
	var out bytes.Buffer
	for r := range bundle.Roots() {
		if r.Constraint != nil {
			continue
		}
		_ = pem.Encode(&out, &pem.Block{Type: "CERTIFICATE", Bytes: r.Certificate})
	}
	return out.Bytes()
}

// Tarball is the image of one architecture as a docker archive under
// LocalRef, the form `ctr images import` reads with its name.
func (im Image) Tarball(arch string) ([]byte, error) {
	img, ok := im.ByArch[arch]
	if !ok {
		return nil, fmt.Errorf("no controller image for linux/%s (built for %s): a hostctl built with make build carries both", arch, strings.Join(im.Arches(), ", "))
	}
	ref, err := name.NewTag(im.LocalRef())
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := tarball.Write(ref, img, &buf); err != nil {
		return nil, fmt.Errorf("controller image tarball for linux/%s: %w", arch, err)
	}
	return buf.Bytes(), nil
}
