package cli

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
)

// Exit statuses, as kubectl's: 0 done (or healthy), 1 failed (or something
// reported unhealthy), 2 the command line or the config is wrong.
const (
	ExitFailed = 1
	ExitUsage  = 2
)

// usageError is a mistake in the command line or the config: fixing the
// invocation fixes it, retrying does not.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usageErrorf(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

// ExitCode is the process status for what the command tree returned.
func ExitCode(err error) int {
	var u usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &u):
		return ExitUsage
	}
	return ExitFailed
}

// strictUsage makes every usage mistake in the tree a usageError: bad flags,
// wrong arguments, and unknown subcommands of a group (cobra would print the
// group's help and exit 0).
func strictUsage(root *cobra.Command) {
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		switch {
		case c.HasSubCommands() && c.Run == nil && c.RunE == nil:
			c.Args = cobra.ArbitraryArgs
			c.RunE = unknownSubcommand
			c.SuggestionsMinimumDistance = 2 // cobra's own, set only on its path
		case c.Args != nil:
			check := c.Args
			c.Args = func(cmd *cobra.Command, args []string) error {
				if err := check(cmd, args); err != nil {
					return usageError{fmt.Errorf("%w (see %s --help)", err, cmd.CommandPath())}
				}
				return nil
			}
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

func unknownSubcommand(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return cmd.Help()
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		msg += ": did you mean " + strings.Join(s, " or ") + "?"
	}
	return usageErrorf("%s (see %s --help)", msg, cmd.CommandPath())
}
