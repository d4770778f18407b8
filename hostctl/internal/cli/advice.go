package cli

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/meshvm/meshvm/pkg/reason"
)

// advice is the next step for a reason, worded for this terminal: the
// packages below report reasons and never name a hostctl command. text
// takes the reason's arguments by index only (%[1]s the first, usually the
// VM); sep joins it to what it follows (": " when empty).
type advice struct {
	sep, text string
}

// advices is the one table of what hostctl tells a user to do, by reason.
var advices = map[reason.Reason]advice{
	// A VM's machine.
	reason.VMAbsent:        {"", "run hostctl up to create it"},
	reason.VMNotFound:      {"", "run hostctl up (or hostctl vm add %[1]s) to create it"},
	reason.VMNotRunning:    {"", "run hostctl vm start %[1]s"},
	reason.VMStopped:       {"", "run hostctl vm start %[1]s (or hostctl up)"},
	reason.VMNotRunningNow: {"", "run hostctl up (or hostctl vm start %[1]s)"},
	reason.VMNoAddress:     {"", "check the machine's network (multipass info %[1]s), then run hostctl up"},
	reason.VMStoppedRenew:  {"", "start it (hostctl vm start %[1]s), then renew"},
	reason.VMGone:          {"", "run hostctl up to create it"},
	reason.MachineTimedOut: {", then ", "run hostctl up again (it carries on with the instance)"},
	reason.MachineLost:     {", then ", "hostctl up again"},
	reason.MachineYours:    {" ", "(hostctl down already uninstalled the agent)"},

	// A VM's agent.
	reason.AgentUnreachable:  {"", "run hostctl up to reinstall the agent"},
	reason.AgentDown:         {"", "run hostctl up to reinstall the agent on %[1]s"},
	reason.AgentNotAnswering: {"", "see journalctl -u vmagent on the VM, or run hostctl up to reinstall it"},
	reason.AgentOutdated:     {"", "run hostctl up (it updates the agent; nothing else changes)"},
	reason.AgentOutdatedRPC:  {"", "run hostctl up"},
	reason.AgentNoCheck:      {"", "run hostctl up (it updates the agent), or see journalctl -u vmagent on the VM"},

	// A VM's files and mesh state.
	reason.AddressMoved:       {"", "run hostctl up: new certificate and hosts block, and the stale WorkloadEntry is deleted"},
	reason.NoHostsFile:        {"", "run hostctl vm onboard %[1]s"},
	reason.IstiodUnresolved:   {"", "run hostctl vm onboard %[1]s (it writes the hosts block)"},
	reason.IstiodMisresolved:  {"", "run hostctl vm onboard %[1]s"},
	reason.HostsBlockStale:    {"", "run hostctl up to rewrite the hosts block"},
	reason.IstiodDNSUnchecked: {"", "run hostctl up (it updates the agent)"},
	reason.IstiodAddrUnknown:  {"", "run hostctl up"},
	reason.ProxySkewed:        {"", "run hostctl vm onboard %[1]s (it delivers istiod's version)"},
	reason.ProxyBuildDiffers:  {"", "run hostctl vm onboard %[1]s (it sends the matching binaries)"},
	reason.ProxyBuildMissing:  {"", "run hostctl up"},
	reason.CaptureUnsettled:   {"", "run hostctl doctor again once the sidecar has settled; see hostctl vm logs %[1]s"},
	reason.CaptureRestart:     {" ", "(hostctl vm onboard %[1]s --restart)"},
	reason.TokenChanged:       {"; ", "run hostctl vm onboard %[1]s"},
	reason.SidecarDown:        {"", "see hostctl vm logs %[1]s, then run hostctl vm onboard %[1]s"},
	reason.NoEntry:            {"; ", "see hostctl vm logs %[1]s"},
	reason.OwnAppUnhealthy:    {"", "hostctl runs no app on %[1]s (app: false), so Healthy waits on yours: start it on port %[2]s"},
	reason.EntryStale:         {"", "see hostctl vm logs %[1]s"},
	reason.EntryTimedOut:      {" ", "(see hostctl vm logs)"},
	reason.NotBackOnline:      {"; then ", "run hostctl vm onboard %[1]s"},
	reason.TokenRevoked:       {" ", "(hostctl vm onboard %[1]s issues a new token)"},
	reason.NotDeclared:        {"", "run hostctl up to declare it"},
	reason.VMPaused:           {"", "hostctl vm onboard %[1]s resumes it with a new token"},
	reason.NoFleetStore:       {": ", "run hostctl up (or hostctl fleet adopt) from the workstation whose state directory onboarded these VMs"},
	reason.TokenNotRevoked:    {"", "run hostctl vm rm %[1]s again once the cluster answers"},
	reason.RevisionKept:       {"", "hostctl vm upgrade %[1]s --revision %[2]s moves it"},
	reason.NotBackOnRevision:  {"", "roll it back with hostctl vm upgrade %[1]s --revision %[2]s"},

	// Credentials.
	reason.CredentialsReissue:    {"", "run hostctl vm onboard %[1]s (a new token bound to a new Secret; no restart)"},
	reason.CredentialsRevoked:    {"", "if that was not meant, run hostctl vm onboard %[1]s (a new token bound to a new Secret; no restart); else hostctl vm rm %[1]s"},
	reason.CredentialsRenewing:   {"", "if it stays so, see hostctl vm logs %[1]s"},
	reason.CredentialsOverdue:    {"", "see hostctl vm logs %[1]s and hostctl doctor"},
	reason.CredentialsTokenAging: {"", "run hostctl vm renew %[1]s (or hostctl up): it replaces the token, no restart"},

	// The cluster, Istio and the workstation.
	reason.ConfigField:        {"", "fix the field (hostctl config show prints every field with its default)"},
	reason.ChangedWhileRead:   {"", "run hostctl again"},
	reason.ClusterDown:        {"", "run hostctl up"},
	reason.ClusterStopped:     {"", "run hostctl cluster up"},
	reason.ClusterNotUp:       {"", "is the cluster up? run hostctl up (or hostctl cluster up)"},
	reason.ClusterUnreachable: {" ", "(is the cluster up? hostctl up starts it)"},
	reason.ClusterUnanswered:  {"", "is the cluster up? (hostctl cluster status)"},
	reason.IstiodNotReady:     {"", "run hostctl up"},
	reason.IstiodNotInstalled: {"", "run hostctl up (it installs and waits for istiod)"},
	reason.IstioNotInstalled:  {"", "run hostctl istio install"},
	reason.IstioIncomplete:    {"", "run hostctl istio install"},
	reason.IstioVersionDown:   {"", "run hostctl up"},
	reason.RevisionNotReady:   {"", "install that revision first (for meshvm's Istio: istio.revision: %[1]s, then hostctl up)"},
	reason.MeshConfigMissing:  {"", "is Istio (revision %[1]s) installed? run hostctl up"},
	reason.NoGatewayAddress:   {"", "run hostctl up (it waits for it and names what holds it up)"},
	reason.TwoIstios:          {" ", "(hostctl down removes meshvm's)"},
	reason.LabVMsLeft:         {"", "list them under vms and run hostctl down again to delete them"},

	// Fleet mode's controller.
	reason.WorkloadNotUp:  {"", "run hostctl up first (it installs Istio and creates the workload), or set workload.namespace to the VMs' namespace"},
	reason.MeshVMsRemain:  {"; ", "remove them first (hostctl vm rm, hostctl down), or pass --force to remove the controller anyway (they stay, with the CRD)"},
	reason.ImageNotOnNode: {"", "run hostctl fleet install again (it loads it into every node of the cluster)"},
	reason.ImageNotListed: {"", "run hostctl fleet install again"},
	reason.K3sMissing:     {"", "hostctl cluster up installs it"},
}

// adviceOn is the advice on c, its arguments filled in; false when its
// reason has none.
func adviceOn(c reason.Cause) (advice, bool) {
	a, ok := advices[c.Reason]
	if !ok {
		return advice{}, false
	}
	args := make([]any, len(c.Args))
	for i, s := range c.Args {
		args[i] = s
	}
	if strings.Contains(a.text, "%") {
		a.text = fmt.Sprintf(a.text, args...)
	}
	if a.sep == "" {
		a.sep = ": "
	}
	return a, true
}

// advise is text followed by the advice on c, joined as the table says;
// the advice alone when text is empty.
func advise(text string, c reason.Cause) string {
	a, ok := adviceOn(c)
	switch {
	case !ok:
		return text
	case text == "":
		return a.text
	}
	return text + a.sep + a.text
}

// advisedError is a command's error with the advice on each reason it
// carries right after that reason's message, where the message said it
// before the advice moved here.
type advisedError struct {
	err error
	msg string
}

func (e advisedError) Error() string { return e.msg }
func (e advisedError) Unwrap() error { return e.err }

// adviseError words the advice on the reasons err carries.
func adviseError(err error) error {
	if _, ok := reason.Of(err); !ok {
		return err
	}
	return advisedError{err, reason.Format(err, advise)}
}

// adviseErrors makes every command of the tree word the advice on the
// reasons its error carries.
func adviseErrors(c *cobra.Command) {
	if run := c.RunE; run != nil {
		c.RunE = func(cmd *cobra.Command, args []string) error { return adviseError(run(cmd, args)) }
	}
	for _, sub := range c.Commands() {
		adviseErrors(sub)
	}
}
