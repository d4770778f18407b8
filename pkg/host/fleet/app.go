package fleet

import (
	"context"
	"fmt"
	"strings"

	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/vmcore"
	"github.com/meshvm/meshvm/pkg/machine"
)

// The recipe's app: python3 -m http.server on the workload port, as a unit.
const (
	appUnitName = "meshvm-app.service"
	appUnitPath = "/etc/systemd/system/" + appUnitName
	appDir      = "/srv/meshvm-app"
	// legacyLabApp is the unit lab VMs had before every VM got the app.
	legacyLabApp = "meshvm-lab-app.service"
)

// appServerCommand serves dir on port with python3 (the recipe's), else
// busybox httpd (the lab's Debian has no python3).
func appServerCommand(dir string, port int) string {
	return fmt.Sprintf("cd %[1]s && if command -v python3 >/dev/null 2>&1; then exec python3 -m http.server %[2]d; fi; exec busybox httpd -f -p %[2]d -h .",
		machine.ShellQuote(dir), port)
}

// appUnit runs the server as a transient unprivileged user: it only reads
// its page. The page is written with full privileges (+) before it starts.
func appUnit(vm string, port int) string {
	return fmt.Sprintf(`[Unit]
Description=meshvm: the recipe's app, HTTP on port %[1]d
After=network.target

[Service]
DynamicUser=yes
# A workload port below 1024 (say 80) needs this much, and no more.
AmbientCapabilities=CAP_NET_BIND_SERVICE
ExecStartPre=+/bin/sh -c 'mkdir -p %[3]s && echo "hello from %[2]s" > %[3]s/index.html'
ExecStart=/bin/sh -c '%[4]s'
Restart=always

[Install]
WantedBy=multi-user.target
`, port, vm, appDir, appServerCommand(appDir, port))
}

// removeUnitsScript stops, disables and deletes those of units that exist,
// printing "removed" when there were any.
func removeUnitsScript(units ...string) string {
	b := strings.Builder{}
	b.WriteString("gone=; ")
	for _, u := range units {
		path := "/etc/systemd/system/" + u
		fmt.Fprintf(&b, "if [ -e %[1]s ]; then systemctl disable --now %[2]s >/dev/null 2>&1 || true; rm -f %[1]s; gone=1; fi; ", path, u)
	}
	b.WriteString(`if [ -n "$gone" ]; then systemctl daemon-reload; echo removed; fi`)
	return b.String()
}

// ensureApp converges the recipe's app on the VM: the unit is sent only
// when it differs, and the server restarted only then. It says what serves.
func ensureApp(ctx context.Context, p machine.Provider, vm string, port int) (string, error) {
	unit := appUnit(vm, port)
	differ, err := machine.Differing(ctx, p, vm, map[string][]byte{appUnitPath: []byte(unit)})
	if err != nil {
		return "", err
	}
	start := "systemctl enable --no-reload --now " + appUnitName
	if differ[appUnitPath] {
		if err := p.Transfer(ctx, vm, appUnitPath, strings.NewReader(unit), 0o644); err != nil {
			return "", err
		}
		// enable --now would leave a running server on its old unit.
		start = "systemctl daemon-reload && systemctl enable --no-reload " + appUnitName + " && systemctl restart " + appUnitName
	}
	// It prints what serves, or nothing (and leaves no unit) when the VM has
	// neither server. Lab VMs had the app under another name before.
	script := "if command -v python3 >/dev/null 2>&1; then server=python3; elif command -v busybox >/dev/null 2>&1; then server=busybox; " +
		"else rm -f " + appUnitPath + "; exit 0; fi; { " + removeUnitsScript(legacyLabApp) + "; } >/dev/null; " + start + " && echo $server"
	out, err := p.Exec(ctx, vm, nil, "sh", "-c", script)
	if err != nil {
		return "", fmt.Errorf("app: start %s: %w: %s", appUnitName, err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	server := lines[len(lines)-1]
	if server != "python3" && server != "busybox" {
		return "", fmt.Errorf("the VM has neither python3 nor busybox to serve the recipe's app on port %d: install python3 on it "+
			"(apt-get install python3), or set app: false for %s in the config (workload.app: false for every VM) and run your own app on port %d",
			port, vm, port)
	}
	how := "unchanged"
	if differ[appUnitPath] {
		how = "installed and started"
	}
	return fmt.Sprintf("%s on port %d (%s %s)", serverName(server), port, appUnitName, how), nil
}

func serverName(server string) string {
	if server == "python3" {
		return "python3 -m http.server"
	}
	return "busybox httpd"
}

// removeApp takes hostctl's app off the VM, saying whether there was one.
func removeApp(ctx context.Context, p machine.Provider, vm string) (bool, error) {
	// /srv/lab-app was the lab's old unit's page.
	out, err := p.Exec(ctx, vm, nil, "sh", "-c", removeUnitsScript(appUnitName, legacyLabApp)+"; rm -rf "+appDir+" /srv/lab-app")
	if err != nil {
		return false, fmt.Errorf("app: remove %s: %w: %s", appUnitName, err, out)
	}
	return strings.TrimSpace(string(out)) == "removed", nil
}

// apps is the recipe's app on the VMs of a machine provider, as the core's
// provisioning converges it.
type apps struct{ machine.Provider }

var _ vmcore.Apps = apps{}

func (a apps) Ensure(ctx context.Context, vm string, port int) (string, error) {
	return ensureApp(ctx, a.Provider, vm, port)
}

func (a apps) Remove(ctx context.Context, vm string) (bool, error) {
	return removeApp(ctx, a.Provider, vm)
}

// ownApps are the VMs that run their own app.
func ownApps(cfg config.Config) []string {
	var own []string
	for _, vm := range cfg.VMs {
		if !cfg.RunsApp(vm) {
			own = append(own, vm.Name)
		}
	}
	return own
}
