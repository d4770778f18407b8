//go:build linux

package multipass

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/meshvm/meshvm/lab/build"
	"github.com/meshvm/meshvm/lab/labmachine"
	"github.com/meshvm/meshvm/pkg/machine"
)

// socketPath is what the real client names when it cannot reach the daemon.
const socketPath = "/var/snap/multipass/common/multipass_socket"

type daemon struct {
	dir            string
	lab            *labmachine.Provider
	stdin          io.Reader
	stdout, stderr io.Writer
}

// exit codes of the multipass client (include/multipass/cli/return_codes.h).
const (
	exitOK               = 0
	exitCommandLineError = 1
	exitCommandFail      = 2
)

// Main runs one multipass command and returns its exit code.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "Usage: multipass launch|info|list|exec|transfer|start|stop|suspend|delete|recover|purge|version ...")
		return exitCommandLineError
	}
	name, args := args[0], args[1:]
	dir := os.Getenv(DirEnv)
	if st, err := os.Stat(dir); dir == "" || err != nil || !st.IsDir() {
		fmt.Fprintf(stderr, "%s failed: cannot connect to the multipass socket\nPlease ensure multipassd is running and '%s' is accessible\n", name, socketPath)
		return exitCommandFail
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	// The stand-in's directory is a lab instance of its own (lab/instance):
	// its VMs get a range and interface names apart from any lab's.
	d := &daemon{dir: dir, stdin: stdin, stdout: stdout, stderr: stderr}
	d.lab = labmachine.New(log, filepath.Join(dir, "vms"), build.DefaultCacheDir()).WithImage(labmachine.Image{Packages: Packages, Setup: d.seed})
	// No signal handling: a killed client dies where it is, and so does a
	// launch in progress (its instance stays Starting).
	ctx := context.Background()
	cmds := map[string]func(context.Context, []string) int{
		"launch": d.launch, "info": d.info, "list": d.list, "ls": d.list, "exec": d.exec,
		"transfer": d.transfer, "copy-files": d.transfer, "start": d.start, "stop": d.stop,
		"suspend": d.suspend, "delete": d.delete, "recover": d.recover, "purge": d.purge, "version": d.version,
	}
	run, ok := cmds[name]
	if !ok {
		fmt.Fprintf(stderr, "Error: Unknown command '%s' (try \"multipass help\")\n", name)
		return exitCommandLineError
	}
	return run(ctx, args)
}

// failed prints an error as the client's standard failure handler does
// ("CMD failed: MESSAGE", then the details) and returns its exit code.
func (d *daemon) failed(cmd, msg, details string) int {
	fmt.Fprintf(d.stderr, "%s failed: %s\n", cmd, msg)
	if details != "" {
		fmt.Fprintf(d.stderr, "%s\n", details)
	}
	return exitCommandFail
}

// usageError prints a command-line mistake; the client exits 1 for those.
func (d *daemon) usageError(format string, a ...any) int {
	fmt.Fprintf(d.stderr, format+"\n", a...)
	return exitCommandLineError
}

// options parses args as Qt's parser does for one command: options before
// "--" anywhere, "--opt=value", "--opt value" or "-o value" for those that
// take a value; everything after "--" is positional.
func options(args []string, takesValue map[string]bool, aliases map[string]string) (map[string]string, []string, error) {
	opts := map[string]string{}
	var pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i+1:]...)
			break
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			pos = append(pos, a)
			continue
		}
		key, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if long, ok := aliases[key]; ok {
			key = long
		}
		needs, known := takesValue[key]
		if !known {
			//lint:ignore ST1005 the stand-in says what multipass (Qt's QCommandLineParser) says, word for word
			return nil, nil, fmt.Errorf("Unknown option '%s'.", key)
		}
		if needs && !hasValue {
			if i+1 >= len(args) {
				//lint:ignore ST1005 as above, multipass's own words
				return nil, nil, fmt.Errorf("Missing value after '%s'.", a)
			}
			i++
			value = args[i]
		}
		opts[key] = value
	}
	return opts, pos, nil
}

// seed writes the cloud-init seed of the instance booting as lab VM vm.
func (d *daemon) seed(vm, root string) error {
	ins, err := d.all()
	if err != nil {
		return err
	}
	for _, in := range ins {
		if in.LabName == vm {
			return seed(in.Name, root)
		}
	}
	return fmt.Errorf("no instance boots as lab VM %s", vm)
}

func (d *daemon) recordPath(name string) string {
	return filepath.Join(d.dir, "instances", name+".json")
}

// load returns the record of an instance, or nil when there is none.
func (d *daemon) load(name string) (*instance, error) {
	data, err := os.ReadFile(d.recordPath(name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var in instance
	if err := json.Unmarshal(data, &in); err != nil {
		return nil, fmt.Errorf("instance record %s: %w", d.recordPath(name), err)
	}
	return &in, nil
}

// save writes the record atomically: a command killed mid-way leaves the
// old record or the new one.
func (d *daemon) save(in *instance) error {
	data, err := json.MarshalIndent(in, "", "  ")
	if err != nil {
		return err
	}
	p := d.recordPath(in.Name)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

func (d *daemon) all() ([]*instance, error) {
	files, _ := filepath.Glob(filepath.Join(d.dir, "instances", "*.json"))
	sort.Strings(files)
	var out []*instance
	for _, f := range files {
		in, err := d.load(strings.TrimSuffix(filepath.Base(f), ".json"))
		if err != nil {
			return nil, err
		}
		out = append(out, in)
	}
	return out, nil
}

// state is the instance's state as `info` reports it: what the last command
// left, except that a Running instance whose VM is gone is Stopped, as
// Multipass sees a VM process that ended.
func (d *daemon) state(ctx context.Context, in *instance) string {
	switch {
	case in.Deleted:
		return "Deleted"
	case in.State != "Running":
		return in.State
	}
	if m, err := d.lab.Info(ctx, in.LabName); err != nil || m.State != "Running" {
		return "Stopped"
	}
	return "Running"
}

// labName maps an instance name to a lab VM name (it names a network
// interface: at most 10 of a-z, 0-9, '-'); longer or mixed-case names are
// hashed.
func labName(name string) string {
	if len(name) <= 10 && strings.Trim(name, "abcdefghijklmnopqrstuvwxyz0123456789-") == "" {
		return name
	}
	sum := sha256.Sum256([]byte(name))
	return "mp-" + hex.EncodeToString(sum[:])[:7]
}

// images are the aliases the stand-in answers to, with the release title
// Multipass reports as image_release. The VM is the lab's Debian whatever
// the alias: the stand-in reports the image asked for and, as `release`,
// the system really running.
var images = map[string]string{
	"22.04": "22.04 LTS", "jammy": "22.04 LTS",
	"24.04": "24.04 LTS", "noble": "24.04 LTS", "lts": "24.04 LTS", "": "24.04 LTS",
}

func (d *daemon) launch(ctx context.Context, args []string) int {
	opts, pos, err := options(args, map[string]bool{"cpus": true, "memory": true, "mem": true, "disk": true, "name": true, "timeout": true, "cloud-init": true},
		map[string]string{"c": "cpus", "m": "memory", "d": "disk", "n": "name"})
	if err != nil {
		return d.usageError("%v", err)
	}
	if len(pos) > 1 {
		return d.usageError("Too many arguments supplied")
	}
	image := ""
	if len(pos) == 1 {
		image = pos[0]
	}
	cpus := 1
	if v, ok := opts["cpus"]; ok {
		if cpus, err = strconv.Atoi(v); err != nil || cpus < 1 {
			return d.usageError("Error: invalid CPU count '%s', need a positive integer value.", v)
		}
	}
	if _, ok := opts["cloud-init"]; ok {
		return d.usageError("error: the multipass stand-in does not take --cloud-init: it boots Multipass's base cloud-init config only")
	}
	timeout, code := d.timeout(opts)
	if code != exitOK {
		return code
	}
	memory, disk := orDefault(opts["memory"], opts["mem"]), opts["disk"]
	// The daemon's checks (validate_create_arguments): the last failing
	// one is the detail the client prints.
	var details string
	for _, c := range []struct {
		value, min, what string
	}{{orDefault(memory, "1G"), "128M", "Invalid memory size value supplied: %s."}, {disk, "512M", "Invalid disk size value supplied: %s."}} {
		if c.value == "" {
			continue
		}
		n, ok := memorySize(c.value)
		if !ok {
			return d.usageError("error: %s is not a valid memory size - need a non-negative integer (in base 10) or a decimal followed by K, M, or G (e.g. 1234B, 42MiB, 0.5G)", c.value)
		}
		if min, _ := memorySize(c.min); n < min {
			details = fmt.Sprintf(c.what, c.value)
		}
	}
	name := opts["name"]
	if name == "" {
		name = fmt.Sprintf("standin-%x", time.Now().UnixNano()&0xffffff)
	}
	if !validName.MatchString(name) {
		details = "Invalid instance name supplied: " + name
	}
	if details != "" {
		return d.failed("launch", "Invalid arguments supplied", details)
	}
	release, ok := images[image]
	if !ok {
		return d.failed("launch", fmt.Sprintf("Unable to find an image matching %q in remote \"\".", image), "")
	}
	if in, err := d.load(name); err != nil {
		return d.failed("launch", err.Error(), "")
	} else if in != nil {
		return d.failed("launch", fmt.Sprintf("instance %q already exists", name), "")
	}
	hash := sha256.Sum256([]byte("meshvm multipass stand-in " + release))
	in := &instance{Name: name, LabName: labName(name), ImageRelease: release, ImageHash: hex.EncodeToString(hash[:]),
		CPUs: cpus, Memory: orDefault(memory, "1G"), Disk: orDefault(disk, "5G"), State: "Starting"}
	if err := d.save(in); err != nil {
		return d.failed("launch", err.Error(), "")
	}
	// Multipass waits for cloud-init's boot-finished only on launch.
	if code := d.boot(ctx, "launch", in, timeout, "/var/lib/cloud/instance/boot-finished"); code != exitOK {
		return code
	}
	fmt.Fprintf(d.stdout, "Launched: %s\n", name)
	return exitOK
}

func orDefault(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

// timeout reads --timeout (seconds); Multipass's default is 5 minutes.
func (d *daemon) timeout(opts map[string]string) (time.Duration, int) {
	v, ok := opts["timeout"]
	if !ok {
		return 5 * time.Minute, exitOK
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		return 0, d.usageError("error: --timeout value has to be a positive integer")
	}
	return time.Duration(n) * time.Second, exitOK
}

// boot starts the instance's VM (or finds it running) and waits until it
// is ready: systemd has finished booting and, when readyFile is given, it
// exists. Only then is the instance Running; until then it stays Starting,
// also when this process is killed.
func (d *daemon) boot(ctx context.Context, cmd string, in *instance, timeout time.Duration, readyFile string) int {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if _, err := d.lab.Launch(ctx, machine.Spec{Name: in.LabName}); err != nil {
		if ctx.Err() != nil {
			return d.failed(cmd, "timed out waiting for initialization to complete", "")
		}
		return d.failed(cmd, err.Error(), "")
	}
	check := "systemctl is-system-running --wait >/dev/null; s=$(systemctl is-system-running); [ \"$s\" = running ] || [ \"$s\" = degraded ]"
	if readyFile != "" {
		check += " && test -e " + readyFile
	}
	for {
		if _, err := d.lab.Exec(ctx, in.LabName, nil, "sh", "-c", check); err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return d.failed(cmd, "timed out waiting for initialization to complete", "")
		case <-time.After(500 * time.Millisecond):
		}
	}
	in.State = "Running"
	if err := d.save(in); err != nil {
		return d.failed(cmd, err.Error(), "")
	}
	return exitOK
}

// selection reads instance names (or --all) and returns their records;
// missing ones fail with Multipass's message, deleted ones too unless
// allowDeleted.
func (d *daemon) selection(cmd string, names []string, all, allowDeleted bool) ([]*instance, int) {
	if all {
		ins, err := d.all()
		if err != nil {
			return nil, d.failed(cmd, err.Error(), "")
		}
		var out []*instance
		for _, in := range ins {
			if allowDeleted || !in.Deleted {
				out = append(out, in)
			}
		}
		return out, exitOK
	}
	if len(names) == 0 {
		return nil, d.usageError("Name argument or --all is required")
	}
	var out []*instance
	var errs []string
	for _, n := range names {
		in, err := d.load(n)
		switch {
		case err != nil:
			return nil, d.failed(cmd, err.Error(), "")
		case in == nil:
			errs = append(errs, fmt.Sprintf("instance %q does not exist", n))
		case in.Deleted && !allowDeleted:
			errs = append(errs, fmt.Sprintf("instance %q is deleted", n))
		default:
			out = append(out, in)
		}
	}
	if len(errs) > 0 {
		return nil, d.failed(cmd, strings.Join(errs, "\n"), "")
	}
	return out, exitOK
}

// formatJSON checks --format: the stand-in prints Multipass's JSON only.
func (d *daemon) formatJSON(opts map[string]string) int {
	switch opts["format"] {
	case "json":
		return exitOK
	case "table", "csv", "yaml", "":
		return d.usageError("error: the multipass stand-in prints --format json only")
	}
	return d.usageError("Invalid format type given.")
}

func (d *daemon) info(ctx context.Context, args []string) int {
	opts, names, err := options(args, map[string]bool{"format": true, "all": false, "no-runtime-information": false, "snapshots": false}, nil)
	if err != nil {
		return d.usageError("%v", err)
	}
	if code := d.formatJSON(opts); code != exitOK {
		return code
	}
	_, all := opts["all"]
	ins, code := d.selection("info", names, all || len(names) == 0, true)
	if code != exitOK {
		return code
	}
	_, noRuntime := opts["no-runtime-information"]
	entries := jsonObject{}
	for _, in := range ins {
		state := d.state(ctx, in)
		var rt runtimeInfo
		if state == "Running" && !noRuntime {
			rt = d.runtime(ctx, in)
		}
		entries[in.Name] = infoEntry(in, state, rt)
	}
	d.stdout.Write(qtJSON(jsonObject{"errors": jsonArray{}, "info": entries}))
	return exitOK
}

func (d *daemon) list(ctx context.Context, args []string) int {
	opts, _, err := options(args, map[string]bool{"format": true, "snapshots": false, "no-ipv4": false}, nil)
	if err != nil {
		return d.usageError("%v", err)
	}
	if code := d.formatJSON(opts); code != exitOK {
		return code
	}
	ins, err := d.all()
	if err != nil {
		return d.failed("list", err.Error(), "")
	}
	// The daemon lists the operative instances, then the deleted ones.
	sort.SliceStable(ins, func(i, j int) bool { return !ins[i].Deleted && ins[j].Deleted })
	list := jsonArray{}
	for _, in := range ins {
		state := d.state(ctx, in)
		var rt runtimeInfo
		if state == "Running" {
			rt = d.addresses(ctx, in)
		}
		list = append(list, listEntry(in, state, rt))
	}
	d.stdout.Write(qtJSON(jsonObject{"list": list}))
	return exitOK
}

// runtimeScript asks a running instance what Multipass's
// RuntimeInstanceInfoHelper asks, one "key: value" a line. The root is an
// overlay, so df looks at / rather than at ext4 file systems.
const runtimeScript = `echo "loadavg: $(cut -d ' ' -f1-3 /proc/loadavg)"
echo "mem_total: $(awk '/^MemTotal:/ {printf "%.0f", $2 * 1024}' /proc/meminfo)"
echo "mem_usage: $(awk '/^MemTotal:/ {t = $2} /^MemAvailable:/ {a = $2} END {printf "%.0f", (t - a) * 1024}' /proc/meminfo)"
echo "disk_usage: $(df -B1 --output=used / | tail -n 1 | tr -d ' ')"
echo "disk_total: $(df -B1 --output=size / | tail -n 1 | tr -d ' ')"
echo "cpus: $(nproc)"
echo "current_release: $(. /etc/os-release; echo "$PRETTY_NAME")"
`

func (d *daemon) runtime(ctx context.Context, in *instance) runtimeInfo {
	rt := d.addresses(ctx, in)
	out, err := d.lab.Exec(ctx, in.LabName, nil, "sh", "-c", runtimeScript)
	if err != nil {
		return rt
	}
	v := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		if k, val, ok := strings.Cut(line, ": "); ok {
			v[k] = strings.TrimSpace(val)
		}
	}
	for _, f := range strings.Fields(v["loadavg"]) {
		if x, err := strconv.ParseFloat(f, 64); err == nil {
			rt.load = append(rt.load, x)
		}
	}
	rt.memTotal, _ = strconv.ParseInt(v["mem_total"], 10, 64)
	rt.memUsed, _ = strconv.ParseInt(v["mem_usage"], 10, 64)
	rt.diskUsed, rt.diskTotal, rt.cpu, rt.release = v["disk_usage"], v["disk_total"], v["cpus"], v["current_release"]
	if rt.release == "" {
		rt.release = "Ubuntu " + in.ImageRelease
	}
	return rt
}

var inetRE = regexp.MustCompile(`^\d+:\s+(\S+)\s+inet\s+([0-9.]+)/`)

// addresses reads the instance's IPv4 addresses from inside it, the
// management interface (the lab's host0) first; none makes "N/A".
func (d *daemon) addresses(ctx context.Context, in *instance) runtimeInfo {
	rt := runtimeInfo{running: true}
	out, err := d.lab.Exec(ctx, in.LabName, nil, "ip", "-4", "-o", "addr", "show", "scope", "global")
	if err != nil {
		return rt
	}
	var mgmt, extra []string
	for _, line := range strings.Split(string(out), "\n") {
		m := inetRE.FindStringSubmatch(line)
		switch {
		case m == nil:
		case m[1] == "host0":
			mgmt = append(mgmt, m[2])
		default:
			extra = append(extra, m[2])
		}
	}
	rt.ipv4 = append(mgmt, extra...)
	return rt
}

func (d *daemon) exec(ctx context.Context, args []string) int {
	opts, pos, err := options(args, map[string]bool{"working-directory": true, "no-map-working-directory": false},
		map[string]string{"d": "working-directory", "n": "no-map-working-directory"})
	if err != nil {
		fmt.Fprintln(d.stderr, err)
		if !slices.Contains(args, "--") {
			fmt.Fprint(d.stderr, "\nOptions to the inner command should come after \"--\", like this:\nmultipass exec <instance> -- <command>\n")
		}
		return exitCommandLineError
	}
	dir, hasDir := opts["working-directory"]
	_, noMap := opts["no-map-working-directory"]
	if hasDir && noMap {
		return d.usageError("Options --working-directory and --no-map-working-directory clash")
	}
	if len(pos) < 2 {
		return d.usageError("Wrong number of arguments")
	}
	name, cmd := pos[0], pos[1:]
	in, err := d.load(name)
	if err != nil {
		return d.failed("exec", err.Error(), "")
	}
	if in == nil && !hasDir && !noMap {
		// Without -n the client first asks info for the instance's mounts,
		// and prints that failure too.
		d.failed("exec", fmt.Sprintf("instance %q does not exist", name), "")
	}
	switch {
	case in == nil:
		return d.failed("exec", fmt.Sprintf("instance %q does not exist", name), "")
	case in.Deleted:
		return d.failed("exec", fmt.Sprintf("instance %q is deleted", name), "")
	case d.state(ctx, in) != "Running":
		// The daemon answers "not running" and the client starts it.
		if code := d.start(ctx, []string{name}); code != exitOK {
			return code
		}
	}
	// The stand-in has no mounts, so no working directory is ever mapped.
	line := commandLine(cmd)
	if hasDir {
		line = commandLine([]string{"cd", dir}) + "&&" + line
	}
	c, err := d.sshSession(ctx, in.LabName, line)
	if err != nil {
		return d.failed("exec", err.Error(), "")
	}
	c.Stdin, c.Stdout, c.Stderr = d.stdin, d.stdout, d.stderr
	return exitCode(c.Run())
}

// sessionScript runs $1 as sshd runs a session's command for the ubuntu
// user: its login shell from passwd with -c, from its home, in sshd's
// environment and none of the caller's (a Multipass client's environment
// never reaches the instance).
const sessionScript = `ent=$(getent passwd ubuntu) || { echo "no user ubuntu in the instance" >&2; exit 255; }
home=$(printf %s "$ent" | cut -d: -f6)
shell=$(printf %s "$ent" | cut -d: -f7)
cd "$home" || exit 255
exec runuser -u ubuntu -- env -i HOME="$home" USER=ubuntu LOGNAME=ubuntu SHELL="$shell" MAIL=/var/mail/ubuntu \
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/games:/usr/local/games:/snap/bin \
  "$shell" -c "$1"`

// sshSession is the command that runs line in the lab VM as an SSH session.
func (d *daemon) sshSession(ctx context.Context, labName, line string) (*exec.Cmd, error) {
	c, err := d.lab.Command(ctx, labName, "sh", "-c", sessionScript, "sh", line)
	if err != nil {
		return nil, err
	}
	c.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"} // for nsenter itself
	return c, nil
}

func exitCode(err error) int {
	var exit *exec.ExitError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &exit) && exit.ExitCode() >= 0:
		return exit.ExitCode()
	case errors.As(err, &exit):
		return 255 // killed by a signal: ssh reports no status
	}
	return exitCommandFail
}

// transferScript writes stdin to $1 inside the instance as SFTP does
// (src/ssh/sftp_client.cpp, sftp_utils.cpp): into a directory under the
// source's name ($2), a missing parent an error unless -p ($3), the file
// opened O_TRUNC|O_CREAT with 0664 under sshd's umask 022, then chmod to
// the source's mode ($4) for a local file.
const transferScript = `t=$1
if [ -d "$t" ]; then
  t="$t/$2"
  if [ -d "$t" ]; then echo "cannot overwrite remote directory \"$t\" with non-directory" >&2; exit 2; fi
elif [ ! -e "$t" ]; then
  p=$(dirname "$t")
  if [ "$3" = 1 ]; then mkdir -p "$p" 2>/dev/null; fi
  if [ ! -d "$p" ]; then echo "remote target does not exist" >&2; exit 2; fi
fi
umask 022
# A subshell: in sh a failed redirection of ":" (a special built-in) ends the script.
if ! (: > "$t") 2>/dev/null; then echo "cannot open remote file $t: SFTP server: Permission denied" >&2; exit 2; fi
cat > "$t" || exit 2
if [ -n "$4" ]; then chmod "$4" "$t" || { echo "cannot set permissions for remote file $t" >&2; exit 2; }; fi
`

func (d *daemon) transfer(ctx context.Context, args []string) int {
	opts, pos, err := options(args, map[string]bool{"recursive": false, "parents": false}, map[string]string{"r": "recursive", "p": "parents"})
	if err != nil {
		return d.usageError("%v", err)
	}
	if len(pos) < 2 {
		return d.usageError("Not enough arguments given")
	}
	if _, ok := opts["recursive"]; ok {
		return d.usageError("error: the multipass stand-in does not transfer directories (-r)")
	}
	_, parents := opts["parents"]
	sources, target := pos[:len(pos)-1], pos[len(pos)-1]
	tName, tPath, toInstance := strings.Cut(target, ":")
	if !toInstance {
		return d.usageError("error: the multipass stand-in transfers to an instance only")
	}
	if tPath == "" {
		tPath = "."
	}
	if len(sources) > 1 && slices.Contains(sources, "-") {
		return d.usageError("Only two arguments allowed when using '-'")
	}
	in, err := d.load(tName)
	switch {
	case err != nil:
		return d.failed("transfer", err.Error(), "")
	case in == nil:
		return d.failed("transfer", fmt.Sprintf("instance %q does not exist", tName), "")
	case in.Deleted:
		return d.failed("transfer", fmt.Sprintf("instance %q is deleted", tName), "")
	case d.state(ctx, in) != "Running":
		// transfer, unlike exec, does not start the instance.
		return d.failed("transfer", fmt.Sprintf("instance %q is not running", tName), "")
	}
	mk := ""
	if parents {
		mk = "1"
	}
	ok := true
	for _, src := range sources {
		var data io.Reader
		base, mode := "stream_output.dat", ""
		if src == "-" {
			data = d.stdin
		} else {
			f, err := os.Open(src)
			if err != nil {
				fmt.Fprintf(d.stderr, "[sftp] cannot open local file %s: %v\n", src, errors.Unwrap(err))
				ok = false
				continue
			}
			st, err := f.Stat()
			if err == nil && st.IsDir() {
				f.Close()
				fmt.Fprintf(d.stderr, "[sftp] omitting local directory %s: recursive mode not specified\n", src)
				ok = false
				continue
			}
			defer f.Close()
			data, base, mode = f, filepath.Base(src), fmt.Sprintf("%o", st.Mode().Perm())
		}
		c, err := d.sshSession(ctx, in.LabName, commandLine([]string{"sh", "-c", transferScript, "sh", tPath, base, mk, mode}))
		if err != nil {
			return d.failed("transfer", err.Error(), "")
		}
		c.Stdin, c.Stderr = data, d.stderr
		if c.Run() != nil {
			ok = false
		}
	}
	if !ok {
		return exitCommandFail
	}
	return exitOK
}

func (d *daemon) start(ctx context.Context, args []string) int {
	opts, names, err := options(args, map[string]bool{"all": false, "timeout": true}, nil)
	if err != nil {
		return d.usageError("%v", err)
	}
	timeout, code := d.timeout(opts)
	if code != exitOK {
		return code
	}
	_, all := opts["all"]
	if !all && len(names) == 0 {
		return d.usageError("Name argument or --all is required")
	}
	// Missing and deleted instances abort the whole start, named one by one
	// (src/client/cli/cmd/start.cpp).
	var ins []*instance
	var details strings.Builder
	if all {
		if ins, code = d.selection("start", nil, true, false); code != exitOK {
			return code
		}
	}
	for _, n := range names {
		in, err := d.load(n)
		switch {
		case err != nil:
			return d.failed("start", err.Error(), "")
		case in == nil:
			fmt.Fprintf(&details, "Instance '%s' does not exist.\n", n)
		case in.Deleted:
			fmt.Fprintf(&details, "Instance '%s' is deleted. Use 'recover' to recover it or 'purge' to permanently delete it.\n", n)
		default:
			ins = append(ins, in)
		}
	}
	if details.Len() > 0 {
		return d.failed("start", "instance(s) missing", details.String())
	}
	for _, in := range ins {
		switch d.state(ctx, in) {
		case "Running":
			continue
		case "Suspended":
			if err := d.signalAll(in, syscall.SIGCONT); err != nil {
				return d.failed("start", err.Error(), "")
			}
		}
		// Stopped boots; Starting is waited for (booted first if a killed
		// launch never got that far).
		if code := d.boot(ctx, "start", in, timeout, ""); code != exitOK {
			return code
		}
	}
	return exitOK
}

func (d *daemon) stop(ctx context.Context, args []string) int {
	opts, names, err := options(args, map[string]bool{"all": false, "force": false, "time": true, "cancel": false},
		map[string]string{"t": "time", "c": "cancel"})
	if err != nil {
		return d.usageError("%v", err)
	}
	_, all := opts["all"]
	_, force := opts["force"]
	if _, delayed := opts["time"]; delayed && opts["time"] != "0" {
		return d.usageError("error: the multipass stand-in stops at once only (no --time)")
	}
	ins, code := d.selection("stop", names, all, false)
	if code != exitOK {
		return code
	}
	for _, in := range ins {
		state := d.state(ctx, in)
		if !force && (state == "Starting" || state == "Suspended") {
			msg := fmt.Sprintf("Cannot shut down instance %s while starting.", in.Name)
			if state == "Suspended" {
				msg = fmt.Sprintf("Cannot shut down suspended instance %s.", in.Name)
			}
			return d.failed("stop", msg, "Use --force to power it off.")
		}
		if err := d.powerOff(ctx, in); err != nil {
			return d.failed("stop", err.Error(), "")
		}
		in.State = "Stopped"
		if err := d.save(in); err != nil {
			return d.failed("stop", err.Error(), "")
		}
	}
	return exitOK
}

// powerOff stops the VM (a suspended one is thawed first, or its frozen
// systemd could not power off).
func (d *daemon) powerOff(ctx context.Context, in *instance) error {
	if in.State == "Suspended" {
		if err := d.signalAll(in, syscall.SIGCONT); err != nil {
			return err
		}
	}
	return d.lab.Stop(ctx, in.LabName)
}

func (d *daemon) suspend(ctx context.Context, args []string) int {
	opts, names, err := options(args, map[string]bool{"all": false}, nil)
	if err != nil {
		return d.usageError("%v", err)
	}
	_, all := opts["all"]
	ins, code := d.selection("suspend", names, all, false)
	if code != exitOK {
		return code
	}
	for _, in := range ins {
		// Only a running instance is suspended; others are left as they are.
		if d.state(ctx, in) != "Running" {
			continue
		}
		if err := d.signalAll(in, syscall.SIGSTOP); err != nil {
			return d.failed("suspend", err.Error(), "")
		}
		in.State = "Suspended"
		if err := d.save(in); err != nil {
			return d.failed("suspend", err.Error(), "")
		}
	}
	return exitOK
}

// signalAll sends sig to every process of the VM: SIGSTOP freezes it in
// place (Multipass's suspend keeps the VM's memory; so do stopped
// processes), SIGCONT resumes it.
func (d *daemon) signalAll(in *instance, sig syscall.Signal) error {
	leader, err := d.lab.Leader(in.LabName)
	if err != nil {
		return err
	}
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", leader))
	if err != nil {
		return fmt.Errorf("the VM of %s: %w", in.Name, err)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		if l, err := os.Readlink(p + "/ns/pid"); err == nil && l == ns {
			pid, _ := strconv.Atoi(filepath.Base(p))
			syscall.Kill(pid, sig)
		}
	}
	return nil
}

func (d *daemon) delete(ctx context.Context, args []string) int {
	opts, names, err := options(args, map[string]bool{"all": false, "purge": false}, map[string]string{"p": "purge"})
	if err != nil {
		return d.usageError("%v", err)
	}
	_, all := opts["all"]
	_, purge := opts["purge"]
	ins, code := d.selection("delete", names, all, true)
	if code != exitOK {
		return code
	}
	for _, in := range ins {
		if !in.Deleted {
			if err := d.powerOff(ctx, in); err != nil {
				return d.failed("delete", err.Error(), "")
			}
			in.Deleted, in.State = true, "Stopped"
			if err := d.save(in); err != nil {
				return d.failed("delete", err.Error(), "")
			}
		}
		if purge {
			if err := d.remove(ctx, in); err != nil {
				return d.failed("delete", err.Error(), "")
			}
		}
	}
	return exitOK
}

func (d *daemon) remove(ctx context.Context, in *instance) error {
	if err := d.lab.Delete(ctx, in.LabName); err != nil {
		return err
	}
	return os.Remove(d.recordPath(in.Name))
}

func (d *daemon) recover(ctx context.Context, args []string) int {
	opts, names, err := options(args, map[string]bool{"all": false}, nil)
	if err != nil {
		return d.usageError("%v", err)
	}
	_, all := opts["all"]
	ins, code := d.selection("recover", names, all, true)
	if code != exitOK {
		return code
	}
	// An instance that is not deleted needs no recovery: the daemon only
	// logs that, and succeeds.
	for _, in := range ins {
		if in.Deleted {
			in.Deleted = false
			if err := d.save(in); err != nil {
				return d.failed("recover", err.Error(), "")
			}
		}
	}
	return exitOK
}

func (d *daemon) purge(ctx context.Context, args []string) int {
	if len(args) > 0 {
		return d.usageError("Too many arguments supplied")
	}
	ins, err := d.all()
	if err != nil {
		return d.failed("purge", err.Error(), "")
	}
	for _, in := range ins {
		if in.Deleted {
			if err := d.remove(ctx, in); err != nil {
				return d.failed("purge", err.Error(), "")
			}
		}
	}
	return exitOK
}

func (d *daemon) version(ctx context.Context, args []string) int {
	fmt.Fprintf(d.stdout, "multipass   1.16.3+meshvm-standin\nmultipassd  1.16.3+meshvm-standin\n")
	return exitOK
}
