// Package build builds the lab's control plane from source through the Go
// module proxy: kube-apiserver and kube-controller-manager from
// k8s.io/kubernetes, istiod (pilot-discovery), pilot-agent and istioctl from
// istio.io/istio, at the versions pinned by the lab/toolchain module. The
// binaries are cached by a key of those pins, the Go version and the target
// architecture, so only the first lab on a machine pays the ~25 minutes;
// meshvm's own stand-in beside them is rebuilt whenever its source changes.
package build

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/meshvm/meshvm/pkg/host/filelock"
)

// Component is one binary the lab needs.
type Component struct {
	Name    string
	Package string
	// versionFlags returns -X flags from the pinned module versions.
	versionFlags func(v Versions) []string
}

// Versions are the pinned module versions read from the toolchain go.mod.
type Versions struct {
	Kubernetes string // e.g. v1.36.3
	Istio      string // a pseudo-version of istio.io/istio
}

func k8sFlags(v Versions) []string {
	major, minor, _ := strings.Cut(strings.TrimPrefix(v.Kubernetes, "v"), ".")
	minor, _, _ = strings.Cut(minor, ".")
	var out []string
	// Without them the server reports v0.0.0-master and kubectl cannot parse it.
	for _, pkg := range []string{"k8s.io/component-base/version", "k8s.io/client-go/pkg/version"} {
		out = append(out, "-X", pkg+".gitVersion="+v.Kubernetes, "-X", pkg+".gitMajor="+major,
			"-X", pkg+".gitMinor="+minor, "-X", pkg+".gitTreeState=clean")
	}
	return out
}

func istioFlags(v Versions) []string {
	return []string{"-X", "istio.io/istio/pkg/version.buildVersion=" + v.Istio}
}

// Components are built in this order (the API server first: it is needed first).
var Components = []Component{
	{"kube-apiserver", "k8s.io/kubernetes/cmd/kube-apiserver", k8sFlags},
	{"kube-controller-manager", "k8s.io/kubernetes/cmd/kube-controller-manager", k8sFlags},
	{"pilot-discovery", "istio.io/istio/pilot/cmd/pilot-discovery", istioFlags},
	{"pilot-agent", "istio.io/istio/pilot/cmd/pilot-agent", istioFlags},
	{"istioctl", "istio.io/istio/istioctl/cmd/istioctl", istioFlags},
	// The lab's stand-in for Envoy (no Envoy binary can be had here).
	{"lab-envoy", "github.com/meshvm/meshvm/lab/toolchain/labenvoy", func(Versions) []string { return nil }},
}

// Apps are test applications from the pinned Istio module: Istio's own echo
// server and client, the gRPC apps of the lab's proxyless VMs (as Istio's
// proxyless tests run them). They are built into the same directory when
// missing, each stamped with its package and flags (<name>.src), and are
// not part of the directory's key: adding one leaves the control plane's
// cache warm.
var Apps = []Component{
	{"echo-server", "istio.io/istio/pkg/test/echo/cmd/server", istioFlags},
	{"echo-client", "istio.io/istio/pkg/test/echo/cmd/client", istioFlags},
}

// Options says where the pins are and where binaries go.
type Options struct {
	// ModuleDir is the lab/toolchain module (go.mod, go.sum, tools.go).
	ModuleDir string
	// CacheDir holds bin-<key> directories.
	CacheDir string
	// Arch is the GOARCH to build for; empty means this machine's.
	Arch string
	// Progress receives one line per step and a heartbeat while a build runs.
	Progress io.Writer
}

// Result is a ready set of binaries.
type Result struct {
	Dir      string
	Versions Versions
	// Cached is true when nothing had to be built.
	Cached bool
}

// Path returns the path of a component's binary.
func (r Result) Path(name string) string { return filepath.Join(r.Dir, name) }

// Pinned is what the module's pins build: the versions the lab's binaries
// report (istiod's /version is its istio.io/istio pseudo-version).
func Pinned(moduleDir string) (Versions, error) {
	gomod, err := os.ReadFile(filepath.Join(moduleDir, "go.mod"))
	if err != nil {
		return Versions{}, fmt.Errorf("lab build pins: %w: run from the meshvm checkout or pass the lab/toolchain directory", err)
	}
	return versions(gomod)
}

// Build returns the cached binaries, building what is missing first.
func Build(ctx context.Context, o Options) (Result, error) {
	o, res, key, err := locate(ctx, o)
	if err != nil {
		return Result{}, err
	}
	// Labs come up side by side (make test runs a lab test beside the
	// rest): one builds, the others wait and find it cached.
	unlock, err := lockBuild(res.Dir, o.Progress)
	if err != nil {
		return Result{}, err
	}
	defer unlock()
	if _, err := os.Stat(filepath.Join(res.Dir, ".complete")); err == nil {
		rebuilt, err := refreshOwn(ctx, o, res.Versions, res.Dir)
		if err != nil {
			return res, err
		}
		built, err := ensureApps(ctx, o, res.Versions, res.Dir)
		res.Cached = !rebuilt && !built
		return res, err
	}
	v := res.Versions
	if err := os.MkdirAll(res.Dir, 0o755); err != nil {
		return Result{}, err
	}
	start := time.Now()
	for i, c := range Components {
		out := filepath.Join(res.Dir, c.Name)
		if ownPackage(c.Package) {
			continue // built below, keyed by its source
		}
		if _, err := os.Stat(out); err == nil {
			fmt.Fprintf(o.Progress, "[%d/%d] %s: cached\n", i+1, len(Components), c.Name)
			continue
		}
		fmt.Fprintf(o.Progress, "[%d/%d] building %s from %s (%s elapsed; the first build takes minutes)\n",
			i+1, len(Components), c.Name, c.Package, time.Since(start).Round(time.Second))
		if err := build(ctx, o, c, v, out, start); err != nil {
			return Result{}, err
		}
	}
	if _, err := refreshOwn(ctx, o, v, res.Dir); err != nil {
		return Result{}, err
	}
	if _, err := ensureApps(ctx, o, v, res.Dir); err != nil {
		return Result{}, err
	}
	if err := os.WriteFile(filepath.Join(res.Dir, ".complete"), []byte(key+"\n"), 0o644); err != nil {
		return Result{}, err
	}
	fmt.Fprintf(o.Progress, "lab control plane built in %s: %s\n", time.Since(start).Round(time.Second), res.Dir)
	return res, nil
}

// lockBuild holds dir's build lock (filelock.Beside) across processes until
// unlock, saying so when another process holds it: a first build takes
// minutes, and a silent wait would look hung.
func lockBuild(dir string, progress io.Writer) (unlock func(), err error) {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return nil, err
	}
	return filelock.Hold(filelock.Beside(dir), 0o644, func() {
		fmt.Fprintf(progress, "another process is building the lab's control plane into %s: waiting for it\n", dir)
	})
}

// ErrNotBuilt reports binaries not in the cache yet.
var ErrNotBuilt = errors.New("the lab's control plane is not built")

// Cached returns the cached binaries of the pinned versions without
// building anything, or ErrNotBuilt naming make lab, which builds them.
// meshvm's own components may be older than their source.
func Cached(ctx context.Context, o Options) (Result, error) {
	_, res, _, err := locate(ctx, o)
	if err != nil {
		return Result{}, err
	}
	if _, err := os.Stat(filepath.Join(res.Dir, ".complete")); err != nil {
		return Result{}, fmt.Errorf("%w in %s: run make lab (as root) once to build it, about 25 minutes", ErrNotBuilt, res.Dir)
	}
	res.Cached = true
	return res, nil
}

// locate reads the pins and returns where their binaries are cached, by a
// key of the pins, the Go version and the architecture.
func locate(ctx context.Context, o Options) (_ Options, _ Result, key string, _ error) {
	if o.Arch == "" {
		o.Arch = runtime.GOARCH
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	gomod, err := os.ReadFile(filepath.Join(o.ModuleDir, "go.mod"))
	if err != nil {
		return o, Result{}, "", fmt.Errorf("lab build pins: %w: run from the meshvm checkout or pass the lab/toolchain directory", err)
	}
	gosum, err := os.ReadFile(filepath.Join(o.ModuleDir, "go.sum"))
	if err != nil {
		return o, Result{}, "", fmt.Errorf("lab build pins: %w", err)
	}
	v, err := versions(gomod)
	if err != nil {
		return o, Result{}, "", err
	}
	goVersion, err := exec.CommandContext(ctx, "go", "env", "GOVERSION").Output()
	if err != nil {
		return o, Result{}, "", fmt.Errorf("the lab builds its control plane with Go: go not found (%v): install Go %s or newer", err, "1.26")
	}
	// The key is the pins' content, not where the module lives: moving or
	// renaming it must not cold-start every cache. meshvm's own components
	// are keyed by their source instead (refreshOwn).
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n%s\n%s\n", withoutModuleLine(gomod), gosum, strings.TrimSpace(string(goVersion)), o.Arch)
	for _, c := range Components {
		if ownPackage(c.Package) {
			continue
		}
		fmt.Fprintf(h, "%s %s %q\n", c.Name, c.Package, c.versionFlags(v))
	}
	key = hex.EncodeToString(h.Sum(nil))[:16]
	return o, Result{Dir: filepath.Join(o.CacheDir, "bin-"+key), Versions: v}, key, nil
}

// withoutModuleLine is go.mod with its module directive left out.
func withoutModuleLine(gomod []byte) []byte {
	var out []byte
	for line := range bytes.Lines(gomod) {
		if f := bytes.Fields(line); len(f) > 0 && string(f[0]) == "module" {
			continue
		}
		out = append(out, line...)
	}
	return out
}

// ownModule is the module of meshvm's own lab components (the Envoy
// stand-in): the pins do not name their version, their source does.
const ownModule = "github.com/meshvm/meshvm/lab/toolchain"

func ownPackage(pkg string) bool { return strings.HasPrefix(pkg, ownModule+"/") }

// refreshOwn (re)builds meshvm's own components whose source differs from
// the one their binary was built from (recorded beside it as <name>.src):
// a change to the stand-in costs its own build, never the control plane's.
func refreshOwn(ctx context.Context, o Options, v Versions, dir string) (rebuilt bool, err error) {
	for _, c := range Components {
		if !ownPackage(c.Package) {
			continue
		}
		sum, err := sourceSum(filepath.Join(o.ModuleDir, strings.TrimPrefix(c.Package, ownModule+"/")))
		if err != nil {
			return rebuilt, err
		}
		built, err := buildStamped(ctx, o, c, v, dir, sum, "(its source changed)")
		rebuilt = rebuilt || built
		if err != nil {
			return rebuilt, err
		}
	}
	return rebuilt, nil
}

// ensureApps builds the Apps missing from dir, or built from another
// package or with other flags than recorded beside them.
func ensureApps(ctx context.Context, o Options, v Versions, dir string) (built bool, err error) {
	for _, c := range Apps {
		b, err := buildStamped(ctx, o, c, v, dir, fmt.Sprintf("%s %q", c.Package, c.versionFlags(v)), "")
		built = built || b
		if err != nil {
			return built, err
		}
	}
	return built, nil
}

// buildStamped builds c into dir unless its binary is there with stamp
// recorded beside it (<name>.src), and records stamp after a build.
func buildStamped(ctx context.Context, o Options, c Component, v Versions, dir, stamp, why string) (bool, error) {
	out := filepath.Join(dir, c.Name)
	if had, err := os.ReadFile(out + ".src"); err == nil && strings.TrimSpace(string(had)) == stamp {
		if _, err := os.Stat(out); err == nil {
			return false, nil
		}
	}
	fmt.Fprintln(o.Progress, strings.TrimSpace(fmt.Sprintf("building %s from %s %s", c.Name, c.Package, why)))
	if err := build(ctx, o, c, v, out, time.Now()); err != nil {
		return false, err
	}
	return true, os.WriteFile(out+".src", []byte(stamp+"\n"), 0o644)
}

// sourceSum digests a package directory's Go files, names and contents.
func sourceSum(dir string) (string, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil || len(files) == 0 {
		return "", fmt.Errorf("lab component source %s: no Go files (%v)", dir, err)
	}
	h := sha256.New()
	for _, f := range files { // Glob sorts
		b, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s %d\n", filepath.Base(f), len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// build compiles one component into a temporary file and renames it into
// place, so an interrupted build never leaves a half binary in the cache.
func build(ctx context.Context, o Options, c Component, v Versions, out string, start time.Time) error {
	tmp := out + ".partial"
	ldflags := strings.Join(append([]string{"-s", "-w"}, c.versionFlags(v)...), " ")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", ldflags, "-o", tmp, c.Package)
	cmd.Dir = o.ModuleDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+o.Arch, "GOFLAGS=-mod=readonly")
	var stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("build %s: %w", c.Name, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	tick := time.NewTicker(30 * time.Second)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			if err != nil {
				os.Remove(tmp)
				return fmt.Errorf("build %s: %w: %s", c.Name, err, lastLines(stderr.String(), 8))
			}
			return os.Rename(tmp, out)
		case <-tick.C:
			fmt.Fprintf(o.Progress, "      still building %s (%s elapsed)\n", c.Name, time.Since(start).Round(time.Second))
		}
	}
}

// versions reads the pinned versions from the toolchain go.mod.
func versions(gomod []byte) (Versions, error) {
	var v Versions
	sc := bufio.NewScanner(strings.NewReader(string(gomod)))
	for sc.Scan() {
		// "module version" or "module version // indirect", in or out of a block.
		f := strings.Fields(strings.TrimPrefix(strings.TrimSpace(sc.Text()), "require "))
		if len(f) >= 2 && (len(f) == 2 || f[2] == "//") {
			switch f[0] {
			case "k8s.io/kubernetes":
				v.Kubernetes = f[1]
			case "istio.io/istio":
				v.Istio = f[1]
			}
		}
	}
	if v.Kubernetes == "" || v.Istio == "" {
		return v, errors.New("lab/toolchain/go.mod does not require k8s.io/kubernetes and istio.io/istio")
	}
	return v, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// IstioFile returns a file of the pinned istio.io/istio module.
func IstioFile(ctx context.Context, moduleDir, rel string) (string, error) {
	dir, err := moduleSource(ctx, moduleDir, "istio.io/istio")
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, rel), nil
}

func moduleSource(ctx context.Context, moduleDir, module string) (string, error) {
	list := func() (string, error) {
		cmd := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Dir}}", module)
		cmd.Dir = moduleDir
		out, err := cmd.Output()
		return strings.TrimSpace(string(out)), err
	}
	dir, err := list()
	if err == nil && dir == "" {
		dl := exec.CommandContext(ctx, "go", "mod", "download", module)
		dl.Dir = moduleDir
		if out, err := dl.CombinedOutput(); err != nil {
			return "", fmt.Errorf("download %s: %w: %s", module, err, out)
		}
		dir, err = list()
	}
	if err != nil || dir == "" {
		return "", fmt.Errorf("locate %s through %s: %v", module, moduleDir, err)
	}
	return dir, nil
}

// DefaultCacheDir is MESHVM_CACHE, else meshvm in the user's cache directory.
func DefaultCacheDir() string {
	if d := os.Getenv("MESHVM_CACHE"); d != "" {
		return d
	}
	d, err := os.UserCacheDir()
	if err != nil {
		return filepath.Join(os.TempDir(), "meshvm-cache")
	}
	return filepath.Join(d, "meshvm")
}

// ModuleDir finds the lab/toolchain module: MESHVM_SOURCE's, else the
// one of the meshvm checkout the working directory is in.
func ModuleDir() (string, error) {
	if d := os.Getenv("MESHVM_SOURCE"); d != "" {
		return filepath.Join(d, "lab", "toolchain"), nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		cand := filepath.Join(dir, "lab", "toolchain", "go.mod")
		if _, err := os.Stat(cand); err == nil {
			return filepath.Dir(cand), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("the lab builds its control plane from the meshvm checkout: run hostctl from it, or set MESHVM_SOURCE to its path")
		}
		dir = parent
	}
}
