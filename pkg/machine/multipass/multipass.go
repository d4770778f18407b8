// Package multipass is the machine provider that drives the multipass CLI:
// launch, info, list, start, stop, exec, transfer and delete, reading state
// only from `--format json` output (never from the text tables). A machine
// that exists is reused, never recreated, whatever state an earlier run left
// it in; Multipass's own error messages (canonical/multipass v1.16, quoted
// below) are turned into errors that name the fix.
package multipass

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/meshvm/meshvm/pkg/machine"

	"github.com/meshvm/meshvm/pkg/reason"
)

// Provider runs the multipass binary.
type Provider struct {
	// Binary is the multipass executable; empty means "multipass" on PATH.
	Binary string
	// Progress, when set, says what Launch is waiting for while it waits.
	Progress func(format string, args ...any)
	// WaitTimeout bounds how long Launch waits for an instance to run with an
	// address and finish cloud-init, beyond Multipass's own launch; zero means
	// 10 minutes.
	WaitTimeout time.Duration
	// poll is the time between two looks at a waited-for instance; zero
	// means 2 s (tests shorten it).
	poll time.Duration
}

var _ machine.Provider = (*Provider)(nil)
var _ machine.Stopper = (*Provider)(nil)

// DefaultImage is the image a VM is launched from when its spec names none
// (and hostctl's default for vms[].image and the k3s nodes).
const DefaultImage = "22.04"

var (
	// ErrDaemonDown reports that multipassd does not answer.
	ErrDaemonDown = errors.New("the multipass daemon is not running")
	// ErrTimeout reports that Multipass launched or started an instance
	// but never reached it.
	ErrTimeout = errors.New("multipass timed out waiting for the instance")
)

// Multipass's own messages, from canonical/multipass v1.16.
const (
	// daemon.cpp (SelectionReaction) and start.cpp (absent_error_fmt).
	msgMissing      = `instance "%s" does not exist`
	msgMissingStart = `Instance '%s' does not exist.`
	// daemon.cpp, for exec, stop and the like on a deleted instance.
	msgDeleted = `instance "%s" is deleted`
	// daemon.cpp create_vm: another launch of that name is under way, or
	// the instance appeared since we looked.
	msgPreparing = `instance "%s" is being prepared`
	msgExists    = `instance "%s" already exists`
	// client_common.cpp, when multipassd's socket does not answer.
	msgNoDaemon = "cannot connect to the multipass socket"
)

// Timeouts, from base_virtual_machine.cpp (SSH never came up; cloud-init
// never finished) and the client's own --timeout timers.
var msgTimeouts = []string{"timed out waiting for response", "timed out waiting for initialization to complete", "Timed out waiting for instance"}

// errBusy is a launch that collided with another launch of the same name:
// look again and wait.
var errBusy = errors.New("instance busy")

// info is the part of `multipass info --format json` read here
// (src/client/cli/formatter/json_formatter.cpp in canonical/multipass).
type info struct {
	Errors []any                   `json:"errors"`
	Info   map[string]instanceInfo `json:"info"`
}

type instanceInfo struct {
	State        string   `json:"state"`
	IPv4         []string `json:"ipv4"`
	Release      string   `json:"release"`
	ImageRelease string   `json:"image_release"`
	CPUCount     string   `json:"cpu_count"`
}

type list struct {
	List []struct {
		Name  string   `json:"name"`
		State string   `json:"state"`
		IPv4  []string `json:"ipv4"`
	} `json:"list"`
}

// validName is Multipass's rule for instance names (utils.cpp valid_hostname).
var validName = regexp.MustCompile(`^([a-zA-Z]|[a-zA-Z][a-zA-Z0-9\-]*[a-zA-Z0-9])$`)

// ValidName checks name against Multipass's rule for instance names, so a
// name Multipass would refuse fails before anything is launched.
func ValidName(name string) error {
	if !validName.MatchString(name) {
		return fmt.Errorf("invalid multipass instance name %q: use letters, digits and hyphens, starting with a letter and not ending with a hyphen (e.g. vm-1)", name)
	}
	return nil
}

func (p *Provider) bin() string {
	if p.Binary != "" {
		return p.Binary
	}
	return "multipass"
}

// run executes multipass and returns its stdout and stderr. about is the
// instance the command is about (info, launch, start, stop, delete): only
// then is Multipass's "does not exist" read as a missing instance. exec and
// transfer pass "": an exec's stderr is mostly the remote command's own.
func (p *Provider) run(ctx context.Context, stdin io.Reader, about string, args ...string) ([]byte, []byte, error) {
	bin, err := exec.LookPath(p.bin())
	if err != nil {
		return nil, nil, fmt.Errorf("multipass not found: install it (https://multipass.run), or use another provider (--provider lab for the local lab; cluster.provider kubeconfig with ssh machines for a cluster and VMs of yours)")
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return stdout.Bytes(), stderr.Bytes(), classify(about, args, stderr.String(), err)
	}
	return stdout.Bytes(), stderr.Bytes(), nil
}

// cli runs a multipass command about an instance and returns its stdout.
func (p *Provider) cli(ctx context.Context, about string, args ...string) ([]byte, error) {
	out, _, err := p.run(ctx, nil, about, args...)
	return out, err
}

// classify turns a failed multipass command into an error naming the fix.
func classify(about string, args []string, stderr string, err error) error {
	full := strings.TrimSpace(stderr)
	msg, label := full, "multipass "+strings.Join(args, " ")
	if args[0] == "exec" || args[0] == "transfer" {
		msg, label = lastLine(full), "multipass "+args[0]+" "+instanceArg(args)
	}
	// An exec's stderr is Multipass's own only where Multipass says so.
	own := args[0] != "exec" || strings.HasPrefix(full, "exec failed:")
	switch {
	case own && strings.Contains(full, msgNoDaemon):
		return fmt.Errorf("%s: %w (%s): start it (macOS: sudo launchctl kickstart -k system/com.canonical.multipassd; Linux: sudo snap start multipass), then run this again", label, ErrDaemonDown, msgNoDaemon)
	case about == "":
	case strings.Contains(msg, fmt.Sprintf(msgMissing, about)) || strings.Contains(msg, fmt.Sprintf(msgMissingStart, about)):
		return fmt.Errorf("%s: %w: %s", label, machine.ErrNotFound, msg)
	case strings.Contains(msg, fmt.Sprintf(msgDeleted, about)):
		return fmt.Errorf("%s: %w", label, deletedError(about))
	case args[0] == "launch" && (strings.Contains(msg, fmt.Sprintf(msgPreparing, about)) || strings.Contains(msg, fmt.Sprintf(msgExists, about))):
		return fmt.Errorf("%s: %w: %s", label, errBusy, msg)
	case timedOut(msg):
		return reason.Wrap(fmt.Errorf("%s: %w: %s: a VPN or firewall between the host and its instances is the usual cause (on macOS, a firewall that blocks bootpd, which gives instances their address); check `multipass info %s`", label, ErrTimeout, lastLine(msg), about),
			reason.MachineTimedOut)
	}
	return fmt.Errorf("%s: %w: %s", label, err, msg)
}

func timedOut(msg string) bool {
	for _, t := range msgTimeouts {
		if strings.Contains(msg, t) {
			return true
		}
	}
	return false
}

// instanceArg is the instance an exec or transfer names, for messages.
func instanceArg(args []string) string {
	for _, a := range args[1:] {
		if a == "--" {
			break
		}
		if name, _, ok := strings.Cut(a, ":"); ok && args[0] == "transfer" {
			return name
		}
		if !strings.HasPrefix(a, "-") && args[0] == "exec" {
			return a
		}
	}
	return ""
}

func deletedError(name string) error {
	return fmt.Errorf("multipass instance %s is deleted but not purged: bring it back with `multipass recover %s`, or remove it for good with `multipass purge` (then hostctl launches it anew)", name, name)
}

// addresses keeps the entries of an ipv4 list that are addresses: Multipass
// prints "N/A" for a running instance that has none yet.
func addresses(ipv4 []string) []string {
	var out []string
	for _, a := range ipv4 {
		if ip, err := netip.ParseAddr(a); err == nil {
			out = append(out, ip.String())
		}
	}
	return out
}

// Info reports one instance.
func (p *Provider) Info(ctx context.Context, name string) (machine.Machine, error) {
	out, err := p.cli(ctx, name, "info", name, "--format", "json")
	if err != nil {
		return machine.Machine{}, err
	}
	var in info
	if err := json.Unmarshal(out, &in); err != nil {
		return machine.Machine{}, fmt.Errorf("multipass info %s: unexpected output (%v): is this multipass version supported?", name, err)
	}
	ii, ok := in.Info[name]
	if !ok {
		return machine.Machine{}, fmt.Errorf("multipass info %s: %w", name, machine.ErrNotFound)
	}
	return machine.Machine{Name: name, State: machine.State(ii.State), Addresses: addresses(ii.IPv4)}, nil
}

// List reports every instance.
func (p *Provider) List(ctx context.Context) ([]machine.Machine, error) {
	out, err := p.cli(ctx, "", "list", "--format", "json")
	if err != nil {
		return nil, err
	}
	var l list
	if err := json.Unmarshal(out, &l); err != nil {
		return nil, fmt.Errorf("multipass list: unexpected output: %v", err)
	}
	ms := make([]machine.Machine, 0, len(l.List))
	for _, i := range l.List {
		ms = append(ms, machine.Machine{Name: i.Name, State: machine.State(i.State), Addresses: addresses(i.IPv4)})
	}
	return ms, nil
}

// Launch brings the instance up, whatever an earlier run left it as (see
// up), then waits for cloud-init as Multipass's own launch does, and reads
// the architecture from the machine itself.
func (p *Provider) Launch(ctx context.Context, s machine.Spec) (machine.Machine, error) {
	if err := ValidName(s.Name); err != nil {
		return machine.Machine{}, err
	}
	deadline := time.Now().Add(p.waitTimeout())
	m, err := p.up(ctx, s, deadline)
	if err != nil {
		return m, err
	}
	arch, err := p.waitReady(ctx, s.Name, deadline)
	if err != nil {
		return m, err
	}
	m.Arch = machine.GoArch(arch)
	return m, nil
}

// startable are the states `multipass start` resolves (daemon.cpp start):
// it boots a stopped or suspended instance, waits for a starting or
// restarting one, and cancels a delayed shutdown.
func startable(s machine.State) bool {
	switch s {
	case machine.Stopped, machine.Suspended, machine.Starting, machine.Restarting, machine.DelayedShutdown:
		return true
	}
	return false
}

// up converges the instance to Running with an address: launched when it
// does not exist, started when `multipass start` resolves its state, waited
// for while it is suspending or has no address yet. A launch killed midway
// leaves the instance Starting: the next up starts it, which waits for it.
func (p *Provider) up(ctx context.Context, s machine.Spec, deadline time.Time) (machine.Machine, error) {
	launched, acted := false, false
	for {
		m, err := p.Info(ctx, s.Name)
		state := m.State
		mayAct := !acted // at most one start per look, so a state that stays put is waited for
		acted = false
		switch {
		case errors.Is(err, machine.ErrNotFound) && !launched:
			err := p.launch(ctx, s)
			if err != nil && !errors.Is(err, errBusy) {
				return m, err
			}
			launched, acted = err == nil, err == nil
			if acted {
				continue
			}
		case err != nil:
			return m, err
		case state == machine.Running && m.Address() != "":
			return m, nil
		case state == machine.Deleted:
			return m, deletedError(s.Name)
		case state == machine.Unknown:
			return m, reason.Wrap(fmt.Errorf("multipass instance %s is in an unknown state (Multipass lost touch with it, e.g. after a launch timed out) and Multipass will not start it: run `multipass stop --force %s`", s.Name, s.Name),
				reason.MachineLost)
		case startable(state) && mayAct:
			p.progress("%s: %s, starting it", s.Name, state)
			if _, err := p.cli(ctx, s.Name, "start", s.Name); err != nil {
				return m, err
			}
			acted = true
			continue
		case state != machine.Running && !state.Transitional() && !startable(state):
			return m, fmt.Errorf("multipass instance %s is in state %q, which hostctl does not know: check `multipass info %s`", s.Name, m.State, s.Name)
		}
		what := fmt.Sprintf("%s to run with an IPv4 address (it is %s)", s.Name, orDefault(string(m.State), "being prepared by another launch"))
		if err := p.wait(ctx, deadline, what); err != nil {
			return m, err
		}
	}
}

func (p *Provider) launch(ctx context.Context, s machine.Spec) error {
	args := []string{"launch", orDefault(s.Image, DefaultImage), "--name", s.Name}
	if s.CPUs > 0 {
		args = append(args, "--cpus", strconv.Itoa(s.CPUs))
	}
	if s.Memory != "" {
		args = append(args, "--memory", s.Memory)
	}
	if s.Disk != "" {
		args = append(args, "--disk", s.Disk)
	}
	p.progress("%s: launching %s (the first launch downloads the image)", s.Name, orDefault(s.Image, DefaultImage))
	_, err := p.cli(ctx, s.Name, args...)
	return err
}

// bootFinished is the file cloud-init writes when it is done, the one
// Multipass's launch waits for (base_virtual_machine.cpp wait_for_cloud_init).
const bootFinished = "/var/lib/cloud/instance/boot-finished"

// readyScript prints the machine's architecture once cloud-init has
// finished, and "booting" before.
const readyScript = "if [ -e " + bootFinished + " ]; then uname -m; else echo booting; fi"

// waitReady waits for cloud-init to finish (a launch interrupted after the
// boot leaves it running) and returns `uname -m`.
func (p *Provider) waitReady(ctx context.Context, name string, deadline time.Time) (string, error) {
	for {
		out, err := p.Exec(ctx, name, nil, "sh", "-c", readyScript)
		if err != nil {
			return "", err
		}
		if arch := strings.TrimSpace(string(out)); arch != "booting" {
			return arch, nil
		}
		if err := p.wait(ctx, deadline, name+" to finish cloud-init (check `multipass exec "+name+" -- cloud-init status --long`)"); err != nil {
			return "", err
		}
	}
}

// wait pauses between two looks at an instance, or gives up at deadline
// naming what it waited for.
func (p *Provider) wait(ctx context.Context, deadline time.Time, what string) error {
	if time.Now().After(deadline) {
		return fmt.Errorf("gave up after %s waiting for %s", p.waitTimeout(), what)
	}
	p.progress("waiting for %s", what)
	poll := p.poll
	if poll == 0 {
		poll = 2 * time.Second
	}
	select {
	case <-ctx.Done():
		return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
	case <-time.After(poll):
		return nil
	}
}

func (p *Provider) waitTimeout() time.Duration {
	if p.WaitTimeout > 0 {
		return p.WaitTimeout
	}
	return 10 * time.Minute
}

func (p *Provider) progress(format string, args ...any) {
	if p.Progress != nil {
		p.Progress(format, args...)
	}
}

// Exec runs args as root on the instance and returns stdout, or on failure
// stdout followed by stderr. --no-map-working-directory keeps Multipass from
// rewriting a sudo command when the host's working directory is under one of
// the instance's mounts (exec.cpp), which would unquote our scripts.
func (p *Provider) Exec(ctx context.Context, name string, stdin io.Reader, args ...string) ([]byte, error) {
	stdout, stderr, err := p.run(ctx, stdin, "", append([]string{"exec", "--no-map-working-directory", name, "--", "sudo", "--"}, args...)...)
	if err != nil {
		return append(stdout, stderr...), err
	}
	return stdout, nil
}

// stageScript makes a directory only the default user (who runs Multipass's
// transfer) can enter, and prints it.
const stageScript = `set -e; d=$(mktemp -d /tmp/hostctl-transfer.XXXXXXXX); chown "${SUDO_UID:?}" "$d"; echo "$d"`

// Transfer streams data to the instance through `multipass transfer -`
// (stdin: no file on the host, which a snap-confined multipass could not
// read from /tmp), then installs it as root, atomically, with its mode.
// Multipass writes the file as the default user with mode 0664 (sftp_client.cpp),
// so it lands in a fresh directory of that user's: no other user on the
// machine (istio-proxy) can read it, or plant a file or link for root to
// install in its place.
func (p *Provider) Transfer(ctx context.Context, name, dst string, data io.Reader, mode os.FileMode) error {
	if !path.IsAbs(dst) {
		return fmt.Errorf("%s: transfer destination %q must be absolute", name, dst)
	}
	out, err := p.Exec(ctx, name, nil, "sh", "-c", stageScript)
	dir := strings.TrimSpace(string(out))
	if err != nil || !strings.HasPrefix(dir, "/tmp/hostctl-transfer.") {
		return fmt.Errorf("transfer to %s: staging directory: %v: %s", dst, err, lastLine(dir))
	}
	staged := dir + "/data"
	if _, _, err := p.run(ctx, data, "", "transfer", "-", name+":"+staged); err != nil {
		p.Exec(context.WithoutCancel(ctx), name, nil, "rm", "-rf", dir)
		return fmt.Errorf("transfer to %s: %w", dst, err)
	}
	if _, err := p.Exec(ctx, name, nil, "sh", "-c", installScript(dir, dst, mode)); err != nil {
		p.Exec(context.WithoutCancel(ctx), name, nil, "rm", "-rf", dir, machine.TempPath(dst))
		return fmt.Errorf("transfer to %s: %w", dst, err)
	}
	return nil
}

// installScript installs the file staged in dir as dst, as root: read
// through stdin, so AtomicWriteScript writes it as any other provider's
// transfer does; anything but a regular file there is refused.
func installScript(dir, dst string, mode os.FileMode) string {
	return fmt.Sprintf(`set -e; s=%s; if [ ! -f "$s" ] || [ -L "$s" ]; then echo "staged $s is not a regular file" >&2; exit 1; fi; exec < "$s"; rm -rf %s; %s`,
		machine.ShellQuote(dir+"/data"), machine.ShellQuote(dir), machine.AtomicWriteScript(dst, mode))
}

// Stop powers the instance off, keeping its disk.
func (p *Provider) Stop(ctx context.Context, name string) error {
	_, err := p.cli(ctx, name, "stop", name)
	return err
}

// Delete deletes and purges the instance; a missing one is fine.
func (p *Provider) Delete(ctx context.Context, name string) error {
	_, err := p.cli(ctx, name, "delete", "--purge", name)
	if errors.Is(err, machine.ErrNotFound) {
		return nil
	}
	return err
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
