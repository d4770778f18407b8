// Package postinst does what the istio-sidecar package's postinst does, as
// ordered, idempotent, reversible steps, and fixes what it gets wrong: the
// /etc/hosts file is merged (a marked block) instead of appended to or
// overwritten, secrets are never world-readable, the token survives a reboot,
// and everything done is recorded so Uninstall reverts exactly that.
package postinst

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strings"

	"github.com/meshvm/meshvm/pkg/fsroot"
	"github.com/meshvm/meshvm/vmagent/internal/agentstate"
	"github.com/meshvm/meshvm/vmagent/internal/hostsfile"
	"github.com/meshvm/meshvm/vmagent/internal/sysusers"
	"github.com/meshvm/meshvm/vmagent/internal/vmfiles"
)

// Outcome is what a step did.
type Outcome int

const (
	Unchanged Outcome = iota + 1
	Changed
	WouldChange
	Failed
	Skipped
)

func (o Outcome) String() string {
	return [...]string{"", "unchanged", "changed", "would change", "failed", "skipped"}[o]
}

// Result reports one step.
type Result struct {
	Name    string
	Outcome Outcome
	Detail  string
}

// Failed reports whether any step failed.
func AnyFailed(rs []Result) bool {
	return slices.ContainsFunc(rs, func(r Result) bool { return r.Outcome == Failed })
}

// Reloader reloads systemd after a unit file changed.
type Reloader interface {
	DaemonReload(ctx context.Context) error
}

// Options wires an Installer.
type Options struct {
	Root  *fsroot.Root
	Users *sysusers.DB
	State *agentstate.Store
	// AgentPath is the vmagent binary the unit calls to prepare the sidecar.
	AgentPath string
	// Systemd reloads units; nil when there is no systemd (a sandbox root).
	Systemd Reloader
	// LookPath finds host tools; defaults to exec.LookPath.
	LookPath func(string) (string, error)
}

// Installer applies and reverts the postinst.
type Installer struct {
	log  *slog.Logger
	opts Options
}

// New returns an Installer.
func New(log *slog.Logger, opts Options) *Installer {
	if opts.LookPath == nil {
		opts.LookPath = exec.LookPath
	}
	if opts.AgentPath == "" {
		opts.AgentPath = "/usr/local/bin/vmagent"
	}
	return &Installer{log: log, opts: opts}
}

const (
	proxyUser = "istio-proxy"
	proxyHome = "/var/lib/istio"
	meshFile  = "/var/lib/istio/config/mesh"
	hostsPath = "/etc/hosts"
)

// dirSpec is a directory the sidecar needs, listed parents first.
type dirSpec struct {
	path  string
	mode  os.FileMode
	owner string
}

var dirs = []dirSpec{
	{"/var/lib/istio", 0o755, "root"},
	{"/var/lib/istio/envoy", 0o755, proxyUser},
	{"/var/lib/istio/proxy", 0o755, proxyUser},
	{"/var/lib/istio/config", 0o755, proxyUser},
	{"/var/log/istio", 0o755, proxyUser},
	// pilot-agent writes its key here: not world-readable, unlike the package's.
	{"/etc/certs", 0o750, proxyUser},
	{vmfiles.PersistDir, 0o700, "root"},
}

var binaries = []string{"/usr/local/bin/pilot-agent", "/usr/local/bin/envoy"}

// run carries one Install or Uninstall.
type run struct {
	ctx    context.Context
	dry    bool
	hosts  []hostsfile.Entry
	record func(func(*agentstate.Record))
}

// dirsCreated records directories made along the way, for Uninstall.
func (r *run) dirsCreated(created []string) {
	if len(created) == 0 {
		return
	}
	r.record(func(rec *agentstate.Record) {
		for _, c := range created {
			rec.CreatedDirs = agentstate.AddOnce(rec.CreatedDirs, c)
		}
	})
}

type step struct {
	name string
	do   func(*Installer, *run) (Outcome, string, error)
}

var installSteps = []step{
	{"preflight", (*Installer).preflight},
	{"group", (*Installer).group},
	{"user", (*Installer).user},
	{"directories", (*Installer).directories},
	{"etc-istio-link", (*Installer).etcIstioLink},
	{"mesh-config", (*Installer).meshConfig},
	{"binaries", (*Installer).binaries},
	{"hosts", (*Installer).hostsBlock},
	{"unit", (*Installer).unit},
}

// StepNames lists the install steps in order.
func StepNames() []string {
	out := make([]string, len(installSteps))
	for i, s := range installSteps {
		out[i] = s.name
	}
	return out
}

// Install runs every step in order. A failed step stops the run; the steps
// after it are reported as skipped. hosts are the lines of the managed
// /etc/hosts block; nil leaves the block as it is.
func (in *Installer) Install(ctx context.Context, dryRun bool, hosts []hostsfile.Entry) []Result {
	r := &run{ctx: ctx, dry: dryRun, hosts: hosts}
	r.record = func(fn func(*agentstate.Record)) {
		if err := in.opts.State.Update(!dryRun, func(rec *agentstate.Record) error { fn(rec); return nil }); err != nil {
			in.log.Error("record install state", "err", err)
		}
	}
	return in.runSteps(r, installSteps, false)
}

// runSteps runs steps in order. Install stops at a failure (later steps
// depend on earlier ones) and reports the rest as skipped; Uninstall keeps
// going, to revert as much as it can.
func (in *Installer) runSteps(r *run, steps []step, keepGoing bool) []Result {
	out := make([]Result, 0, len(steps))
	failed := ""
	for _, s := range steps {
		if failed != "" && !keepGoing {
			out = append(out, Result{Name: s.name, Outcome: Skipped, Detail: "step " + failed + " failed"})
			continue
		}
		o, detail, err := s.do(in, r)
		if err != nil {
			o, detail, failed = Failed, err.Error(), s.name
		}
		if r.dry && o == Changed {
			o = WouldChange
		}
		// Status asks for a dry run on every call: only real runs are news.
		level := slog.LevelInfo
		if r.dry {
			level = slog.LevelDebug
		}
		in.log.Log(r.ctx, level, "postinst step", "step", s.name, "outcome", o.String(), "detail", detail, "dry_run", r.dry)
		out = append(out, Result{Name: s.name, Outcome: o, Detail: detail})
	}
	return out
}

func (in *Installer) preflight(r *run) (Outcome, string, error) {
	var missing []string
	for _, tool := range []string{"useradd", "groupadd", "iptables"} {
		if _, err := in.opts.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		return 0, "", fmt.Errorf("missing %s: install them (Debian/Ubuntu: apt-get install passwd iptables; RHEL: dnf install shadow-utils iptables-nft)", strings.Join(missing, ", "))
	}
	return Unchanged, "useradd, groupadd and iptables are present", nil
}

func (in *Installer) group(r *run) (Outcome, string, error) {
	g, ok, err := in.opts.Users.LookupGroup(proxyUser)
	if err != nil {
		return 0, "", err
	}
	if ok {
		return Unchanged, fmt.Sprintf("group %s exists (gid %d)", proxyUser, g.GID), nil
	}
	if r.dry {
		return Changed, "create system group " + proxyUser, nil
	}
	if err := in.opts.Users.CreateGroup(r.ctx, proxyUser); err != nil {
		return 0, "", err
	}
	r.record(func(rec *agentstate.Record) { rec.CreatedGroup = true })
	g, _, err = in.opts.Users.LookupGroup(proxyUser)
	return Changed, fmt.Sprintf("created system group %s (gid %d)", proxyUser, g.GID), err
}

func (in *Installer) user(r *run) (Outcome, string, error) {
	u, ok, err := in.opts.Users.LookupUser(proxyUser)
	if err != nil {
		return 0, "", err
	}
	if ok {
		return Unchanged, fmt.Sprintf("user %s exists (uid %d)", proxyUser, u.UID), nil
	}
	if r.dry {
		return Changed, "create system user " + proxyUser, nil
	}
	if err := in.opts.Users.CreateUser(r.ctx, proxyUser, proxyUser, proxyHome); err != nil {
		return 0, "", err
	}
	r.record(func(rec *agentstate.Record) { rec.CreatedUser = true })
	u, _, err = in.opts.Users.LookupUser(proxyUser)
	return Changed, fmt.Sprintf("created system user %s (uid %d, home %s, no login)", proxyUser, u.UID, proxyHome), err
}

// ids resolves owner to uid and the owner's group to gid ("root" is 0:0).
func (in *Installer) ids(owner string, r *run) (int, int, error) {
	if owner == "root" {
		return 0, 0, nil
	}
	if r.dry {
		if _, ok, _ := in.opts.Users.LookupUser(owner); !ok {
			return -1, -1, nil // created by an earlier step in a real run
		}
	}
	uid, err := in.opts.Users.UserID(owner)
	if err != nil {
		return 0, 0, err
	}
	gid, err := in.opts.Users.GroupID(owner)
	return uid, gid, err
}

func (in *Installer) directories(r *run) (Outcome, string, error) {
	var changes []string
	for _, d := range dirs {
		uid, gid, err := in.ids(d.owner, r)
		if err != nil {
			return 0, "", err
		}
		info, err := in.opts.Root.Stat(d.path)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			changes = append(changes, "create "+d.path)
			if r.dry {
				continue
			}
			fd, created, err := in.opts.Root.OpenDir(d.path, fsroot.DirOptions{Create: true, Mode: d.mode, UID: uid, GID: gid})
			r.dirsCreated(created)
			if err != nil {
				return 0, "", err
			}
			closeFD(fd)
		case err != nil:
			return 0, "", err
		case !info.Mode.IsDir():
			return 0, "", fmt.Errorf("%s exists and is not a directory: move it away and retry", d.path)
		default:
			if uid < 0 {
				changes = append(changes, "chown "+d.path)
				continue
			}
			changed, err := in.chown(r, d.path, info, uid, gid, d.mode)
			if err != nil {
				return 0, "", err
			}
			if changed {
				changes = append(changes, fmt.Sprintf("chown %s to %s %#o", d.path, d.owner, fsroot.UnixMode(d.mode)))
			}
		}
	}
	return outcome(changes, "all directories in place")
}

// chown converges owner and mode, remembering what a pre-existing path had.
func (in *Installer) chown(r *run, p string, info fsroot.Info, uid, gid int, mode os.FileMode) (bool, error) {
	if info.UID == uid && info.GID == gid && fsroot.UnixMode(info.Mode) == fsroot.UnixMode(mode) {
		return false, nil
	}
	if r.dry {
		return true, nil
	}
	r.record(func(rec *agentstate.Record) {
		if slices.Contains(rec.CreatedDirs, p) || slices.Contains(rec.Files, p) {
			return
		}
		if _, seen := rec.Chowned[p]; !seen {
			if rec.Chowned == nil {
				rec.Chowned = map[string]agentstate.Prior{}
			}
			rec.Chowned[p] = agentstate.Prior{UID: info.UID, GID: info.GID, Mode: fsroot.UnixMode(info.Mode)}
		}
	})
	return in.opts.Root.Chown(p, uid, gid, mode, false)
}

func (in *Installer) etcIstioLink(r *run) (Outcome, string, error) {
	changed, err := in.opts.Root.Symlink(proxyHome, "/etc/istio", r.dry)
	if err != nil {
		return 0, "", err
	}
	if !changed {
		return Unchanged, "/etc/istio -> " + proxyHome, nil
	}
	if !r.dry {
		r.record(func(rec *agentstate.Record) { rec.CreatedLinks = agentstate.AddOnce(rec.CreatedLinks, "/etc/istio") })
	}
	return Changed, "link /etc/istio -> " + proxyHome, nil
}

func (in *Installer) meshConfig(r *run) (Outcome, string, error) {
	_, err := in.opts.Root.Stat(meshFile)
	if err == nil {
		return Unchanged, meshFile + " exists", nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return 0, "", err
	}
	if r.dry {
		return Changed, "create empty " + meshFile, nil
	}
	_, gid, err := in.ids(proxyUser, r)
	if err != nil {
		return 0, "", err
	}
	if err := in.opts.Root.WriteBytes(meshFile, nil, fsroot.WriteOptions{Mode: 0o640, GID: gid}); err != nil {
		return 0, "", err
	}
	r.record(func(rec *agentstate.Record) { rec.Files = agentstate.AddOnce(rec.Files, meshFile) })
	return Changed, "created empty " + meshFile, nil
}

// binaries gives delivered sidecar binaries root:istio-proxy 2755, so Envoy
// runs with the istio-proxy group the capture rules exempt (the package's
// 2755 root:root made it run with group root).
func (in *Installer) binaries(r *run) (Outcome, string, error) {
	var changes, absent []string
	for _, b := range binaries {
		info, err := in.opts.Root.Stat(b)
		if errors.Is(err, fs.ErrNotExist) {
			absent = append(absent, b)
			continue
		}
		if err != nil {
			return 0, "", err
		}
		_, gid, err := in.ids(proxyUser, r)
		if err != nil {
			return 0, "", err
		}
		if gid < 0 {
			changes = append(changes, "chown "+b)
			continue
		}
		changed, err := in.chown(r, b, info, 0, gid, 0o755|os.ModeSetgid)
		if err != nil {
			return 0, "", err
		}
		if changed {
			changes = append(changes, "set root:istio-proxy 2755 on "+b)
		}
	}
	if len(absent) == len(binaries) {
		return Unchanged, "sidecar binaries not delivered yet", nil
	}
	if len(absent) > 0 {
		return outcome(changes, "in place; not delivered yet: "+strings.Join(absent, ", "))
	}
	return outcome(changes, "sidecar binaries in place")
}

func (in *Installer) hostsBlock(r *run) (Outcome, string, error) {
	content, err := in.opts.Root.ReadFile(hostsPath)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return 0, "", err
	}
	if r.hosts == nil {
		cur, err := hostsfile.Entries(content)
		if err != nil {
			return 0, "", err
		}
		if len(cur) == 0 {
			return Skipped, "no hosts entries given and no managed block present", nil
		}
		r.record(func(rec *agentstate.Record) { rec.Hosts = cur })
		return Unchanged, fmt.Sprintf("managed block holds %d entries", len(cur)), nil
	}
	// The sidecar's start puts the block back from this root-only record
	// when cloud-init rewrote /etc/hosts (vmagent/internal/sidecarenv).
	r.record(func(rec *agentstate.Record) { rec.Hosts = r.hosts })
	merged, err := hostsfile.Merge(content, r.hosts)
	if err != nil {
		return 0, "", fmt.Errorf("%s: %w", hostsPath, err)
	}
	warn := strings.Join(hostsfile.Shadowed(merged, r.hosts), "; ")
	if bytes.Equal(merged, content) {
		return Unchanged, joinNonEmpty(fmt.Sprintf("managed block holds %d entries", len(r.hosts)), warn), nil
	}
	if !r.dry {
		if err := in.writeKeepingMode(hostsPath, merged, 0o644); err != nil {
			return 0, "", err
		}
	}
	return Changed, joinNonEmpty(fmt.Sprintf("wrote %d entries into the managed block; other lines kept", len(r.hosts)), warn), nil
}

// writeKeepingMode replaces a system file keeping its owner and mode.
func (in *Installer) writeKeepingMode(p string, data []byte, mode os.FileMode) error {
	opts := fsroot.WriteOptions{Mode: mode}
	if info, err := in.opts.Root.Stat(p); err == nil {
		opts.Mode, opts.UID, opts.GID = info.Mode.Perm()|info.Mode&(os.ModeSetgid|os.ModeSetuid), info.UID, info.GID
	}
	return in.opts.Root.WriteBytes(p, data, opts)
}

func (in *Installer) unit(r *run) (Outcome, string, error) {
	want := []byte(Unit(in.opts.AgentPath))
	have, err := in.opts.Root.ReadFile(UnitPath)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return 0, "", err
	}
	var changes []string
	if !bytes.Equal(have, want) {
		changes = append(changes, "write "+UnitPath)
		if !r.dry {
			if _, err := in.opts.Root.Stat(UnitPath); errors.Is(err, fs.ErrNotExist) {
				r.record(func(rec *agentstate.Record) { rec.Files = agentstate.AddOnce(rec.Files, UnitPath) })
			}
			dir := fsroot.DirOptions{Mode: 0o755}
			res, err := in.opts.Root.WriteFile(UnitPath, bytes.NewReader(want), fsroot.WriteOptions{Mode: 0o644, Size: int64(len(want)), Dir: &dir})
			r.dirsCreated(res.CreatedDirs)
			if err != nil {
				return 0, "", err
			}
		}
	}
	if _, err := in.opts.Root.Readlink(UnitLink); errors.Is(err, fs.ErrNotExist) || errors.Is(err, fsroot.ErrUnsafePath) {
		changes = append(changes, "enable istio.service")
		if !r.dry {
			fd, created, err := in.opts.Root.OpenDir(UnitWantsDir, fsroot.DirOptions{Create: true, Mode: 0o755})
			r.dirsCreated(created)
			if err != nil {
				return 0, "", err
			}
			closeFD(fd)
			if _, err := in.opts.Root.Symlink(UnitPath, UnitLink, false); err != nil {
				return 0, "", err
			}
			r.record(func(rec *agentstate.Record) { rec.CreatedLinks = agentstate.AddOnce(rec.CreatedLinks, UnitLink) })
		}
	} else if err != nil {
		return 0, "", err
	}
	if len(changes) == 0 {
		return Unchanged, "istio.service in place and enabled", nil
	}
	if !r.dry {
		changes = append(changes, in.reload(r.ctx))
	}
	return Changed, strings.Join(changes, "; "), nil
}

func (in *Installer) reload(ctx context.Context) string {
	if in.opts.Systemd == nil {
		return "systemd not reloaded (no systemd for this root)"
	}
	if err := in.opts.Systemd.DaemonReload(ctx); err != nil {
		in.log.Warn("daemon-reload", "err", err)
		return "systemd not reloaded: " + err.Error()
	}
	return "systemd reloaded"
}

func outcome(changes []string, unchanged string) (Outcome, string, error) {
	if len(changes) == 0 {
		return Unchanged, unchanged, nil
	}
	return Changed, strings.Join(changes, "; "), nil
}

func joinNonEmpty(a, b string) string {
	if b == "" {
		return a
	}
	return a + "; warning: " + b
}
