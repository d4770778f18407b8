package multipass

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// The test binary doubles as a fake `multipass` (a boundary that cannot run
// here): with FAKE_MULTIPASS_STATE set it answers as the v1.16 CLI does,
// with its JSON, its error texts and exit codes (canonical/multipass
// daemon.cpp, start.cpp, exec.cpp, transfer.cpp, sftp_client.cpp), keeping
// each instance as files in that directory and logging every invocation:
//
//	NAME.state    the state, as format_utils.cpp words it
//	NAME.ipv4     the ipv4 list's entries instead of 192.168.64.7 (e.g. "N/A")
//	NAME.then     "N STATE": after N more infos the state becomes STATE (and .ipv4 goes)
//	NAME.booting  how many more looks cloud-init takes to finish
//	NAME.mount    a host directory mounted into the instance (at the same path)
//	launch-mode   killed, timeout or preparing: how the next launch goes wrong
//	daemon-down   multipassd is not running
//
// The "machine" of exec and transfer is this host: commands run here as
// this user (sudo dropped, SUDO_UID set as sudo sets it), so the scripts the
// provider sends really run.
func TestMain(m *testing.M) {
	if dir := os.Getenv("FAKE_MULTIPASS_STATE"); dir != "" {
		os.Exit(fakeMultipass(dir, os.Args[1:]))
	}
	os.Exit(m.Run())
}

type fakeState struct{ dir string }

func (f fakeState) read(name string) string {
	b, _ := os.ReadFile(filepath.Join(f.dir, name))
	return strings.TrimSpace(string(b))
}
func (f fakeState) write(name, v string) { os.WriteFile(filepath.Join(f.dir, name), []byte(v), 0o600) }
func (f fakeState) remove(name string)   { os.Remove(filepath.Join(f.dir, name)) }

var fakeValidName = regexp.MustCompile(`^([a-zA-Z]|[a-zA-Z][a-zA-Z0-9\-]*[a-zA-Z0-9])$`)

func fakeMultipass(dir string, args []string) int {
	f := fakeState{dir}
	log, _ := os.OpenFile(filepath.Join(dir, "calls.log"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	fmt.Fprintln(log, strings.Join(args, " "))
	log.Close()
	cmd := args[0]
	fail := func(format string, a ...any) int {
		fmt.Fprintf(os.Stderr, cmd+" failed: "+format+"\n", a...)
		return 2 // ReturnCode::CommandFail
	}
	if f.read("daemon-down") != "" {
		return fail("cannot connect to the multipass socket\nPlease ensure multipassd is running and '/var/snap/multipass/common/multipass_socket' is accessible")
	}
	state := func(name string) string { return f.read(name + ".state") }
	// require_operative_instances_reaction in daemon.cpp.
	operative := func(name string) int {
		switch state(name) {
		case "":
			return fail("The following errors occurred:\ninstance \"%s\" does not exist", name)
		case "Deleted":
			return fail("The following errors occurred:\ninstance \"%s\" is deleted", name)
		}
		return 0
	}
	switch cmd {
	case "info":
		name := args[1]
		if state(name) == "" {
			return fail("The following errors occurred:\ninstance \"%s\" does not exist", name)
		}
		fakeTransition(f, name)
		tmpl, _ := os.ReadFile("testdata/info.json")
		fmt.Print(strings.NewReplacer(`"NAME"`, strconv.Quote(name), `"STATE"`, strconv.Quote(state(name)), `"IP"`, fakeIPv4(f, name)).Replace(string(tmpl)))
	case "list":
		names, _ := filepath.Glob(filepath.Join(dir, "*.state"))
		sort.Strings(names)
		var items []string
		for _, n := range names {
			name := strings.TrimSuffix(filepath.Base(n), ".state")
			items = append(items, fmt.Sprintf(`{"ipv4": [%s], "name": %q, "release": "Ubuntu 22.04 LTS", "state": %q}`, fakeIPv4(f, name), name, state(name)))
		}
		fmt.Printf(`{"list": [%s]}`, strings.Join(items, ", "))
	case "launch":
		name := args[slices.Index(args, "--name")+1]
		switch {
		case !fakeValidName.MatchString(name):
			return fail("Invalid arguments supplied\nInvalid instance name supplied: %s", name)
		case state(name) != "":
			return fail("instance \"%s\" already exists", name)
		}
		mode := f.read("launch-mode")
		f.remove("launch-mode")
		switch mode {
		case "preparing": // another launch of that name is still downloading
			return fail("instance \"%s\" is being prepared", name)
		case "timeout": // SSH never came up: base_virtual_machine.cpp sets Unknown
			f.write(name+".state", "Unknown")
			return fail("%s: timed out waiting for response", name)
		case "killed": // the caller died midway: the daemon carries on, the instance is Starting
			f.write(name+".state", "Starting")
			f.write(name+".booting", "1")
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
		}
		f.write(name+".state", "Running")
	case "start":
		name := args[1]
		switch state(name) {
		case "":
			return fail("instance(s) missing\nInstance '%s' does not exist.", name)
		case "Deleted":
			return fail("instance(s) missing\nInstance '%s' is deleted. Use 'recover' to recover it or 'purge' to permanently delete it.", name)
		case "Unknown":
			return fail("Instance '%s' is already running, but in an unknown state.\nTry to stop it first.", name)
		case "Suspending":
			return fail("Cannot start the instance '%s' while suspending.", name)
		}
		f.write(name+".state", "Running") // Starting and Restarting are waited for, a delayed shutdown cancelled
	case "stop":
		if rc := operative(args[1]); rc != 0 {
			return rc
		}
		f.write(args[1]+".state", "Stopped")
	case "delete":
		name := args[len(args)-1]
		if state(name) == "" {
			return fail("The following errors occurred:\ninstance \"%s\" does not exist", name)
		}
		f.remove(name + ".state")
	case "exec":
		return fakeExec(f, args[1:], operative)
	case "transfer":
		return fakeTransfer(f, args[1:], operative, fail)
	default:
		fmt.Fprintf(os.Stderr, "fake multipass: unexpected %q\n", args)
		return 1
	}
	return 0
}

// fakeIPv4 is the ipv4 list: only a running instance has one (daemon.cpp:
// is_running is Running or Delayed Shutdown).
func fakeIPv4(f fakeState, name string) string {
	if v := f.read(name + ".ipv4"); v != "" {
		return v
	}
	if s := f.read(name + ".state"); s == "Running" || s == "Delayed Shutdown" {
		return `"192.168.64.7"`
	}
	return ""
}

func fakeTransition(f fakeState, name string) {
	n, next, ok := strings.Cut(f.read(name+".then"), " ")
	if !ok {
		return
	}
	if left, _ := strconv.Atoi(n); left > 1 {
		f.write(name+".then", fmt.Sprintf("%d %s", left-1, next))
		return
	}
	f.remove(name + ".then")
	f.remove(name + ".ipv4")
	f.write(name+".state", next)
}

func fakeExec(f fakeState, args []string, operative func(string) int) int {
	noMap, name := false, ""
	i := 0
	for ; i < len(args) && args[i] != "--"; i++ {
		switch a := args[i]; {
		case a == "-n" || a == "--no-map-working-directory":
			noMap = true
		case !strings.HasPrefix(a, "-"):
			name = a
		}
	}
	if rc := operative(name); rc != 0 {
		return rc
	}
	if s := f.read(name + ".state"); s != "Running" && s != "Delayed Shutdown" {
		f.write(name+".state", "Running") // exec.cpp: an instance not running is started first
	}
	remote := args[i+1:]
	if strings.Join(remote, " ") == "sudo -- uname -m" {
		fmt.Println("aarch64") // the machine is arm64, whatever this host is
		return 0
	}
	if strings.Join(remote, " ") == "sudo -- sh -c "+readyScript {
		if n, _ := strconv.Atoi(f.read(name + ".booting")); n > 0 {
			f.write(name+".booting", strconv.Itoa(n-1))
			fmt.Println("booting")
			return 0
		}
		fmt.Println("aarch64")
		return 0
	}
	// exec.cpp: with the working directory under a mount and no -n, a sudo
	// command becomes `sudo sh -c "cd DIR && sudo -u ubuntu ARGS"`, the
	// arguments joined unquoted. This host runs it without the sudos.
	cwd, _ := os.Getwd()
	if mount := f.read(name + ".mount"); mount != "" && !noMap && remote[0] == "sudo" && (cwd == mount || strings.HasPrefix(cwd, mount+"/")) {
		remote = []string{"sh", "-c", "cd " + cwd + " && " + strings.Join(dropSudo(remote), " ")}
	}
	remote = dropSudo(remote)
	c := exec.Command(remote[0], remote[1:]...)
	c.Stdin, c.Stdout, c.Stderr = os.Stdin, os.Stdout, os.Stderr
	c.Env = append(os.Environ(), "SUDO_UID="+strconv.Itoa(os.Getuid()))
	if err := c.Run(); err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode() // the remote status, as exec returns it
		}
		fmt.Fprintf(os.Stderr, "exec failed: %v\n", err)
		return 2
	}
	return 0
}

func dropSudo(args []string) []string {
	if len(args) > 0 && args[0] == "sudo" {
		args = args[1:]
	}
	if len(args) > 0 && args[0] == "--" {
		args = args[1:]
	}
	return args
}

// fakeTransfer copies one source to NAME:PATH as sftp_client.cpp does
// (O_TRUNC, mode 0664 less the umask). It reads no file of the host's /tmp:
// the snap-confined client has a /tmp of its own.
func fakeTransfer(f fakeState, args []string, operative func(string) int, fail func(string, ...any) int) int {
	var pos []string
	for _, a := range args {
		if a != "-p" && a != "--parents" {
			pos = append(pos, a)
		}
	}
	src, dst := pos[0], pos[1]
	name, target, ok := strings.Cut(dst, ":")
	if !ok {
		return fail("Target must be inside an instance")
	}
	if rc := operative(name); rc != 0 {
		return rc
	}
	var in io.Reader = os.Stdin
	if src != "-" {
		if strings.HasPrefix(src, "/tmp/") {
			fmt.Fprintf(os.Stderr, "cannot access %s: No such file or directory\n", src)
			return 2
		}
		file, err := os.Open(src)
		if err != nil {
			fmt.Fprintf(os.Stderr, "cannot access %s: %v\n", src, err)
			return 2
		}
		defer file.Close()
		in = file
	}
	out, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o664)
	if err != nil {
		fmt.Fprintf(os.Stderr, "cannot open remote file %s: %v\n", target, err)
		return 2
	}
	defer out.Close()
	if _, err := io.Copy(out, in); err != nil {
		fmt.Fprintf(os.Stderr, "cannot write to remote file %s: %v\n", target, err)
		return 2
	}
	return 0
}
