/* socketrace stand-in: intentionally empty, BCC includes it by name. */
