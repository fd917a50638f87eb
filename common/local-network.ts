// macOS 15 and later gate the local network behind a privacy permission ("Local Network"). A process without
// it sees multicast go nowhere and connects to LAN addresses fail at once with one of a few errno codes, as if
// there were no route; a launchd service is often never asked. These say when an error looks like that, and
// what to do about it.

/** What connect() to a LAN address returns on macOS while the permission is missing, as a whole word. */
const LOCAL_NETWORK_ERRNO = /\b(EHOSTUNREACH|EPERM|ENETUNREACH)\b/;

/** How to grant the permission. */
export const LOCAL_NETWORK_GRANT =
  "allow it in System Settings > Privacy & Security > Local Network (the terminal app, or node for a " +
  "`cluster service install` service, which macOS may never ask about)";

/** The fix where the permission is surely what is missing (multicast or every peer blocked). */
export const LOCAL_NETWORK_FIX = `macOS blocks local network access for this process: ${LOCAL_NETWORK_GRANT}, or join with --peer <host>:<port>`;

/** The errno code named in an error code or message that a missing Local Network permission would explain. */
export function localNetworkErrno(text: string): string | undefined {
  return LOCAL_NETWORK_ERRNO.exec(text)?.[1];
}
