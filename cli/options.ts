// Parsers for command-line values that several commands share, with commander's error for a bad value.
import { InvalidArgumentError } from "commander";

export function positiveInt(name: string) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isInteger(n) || n <= 0)
      throw new InvalidArgumentError(`${name} must be a positive integer (got "${value}")`);
    return n;
  };
}
