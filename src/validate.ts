/** Argument checks with precise messages: type problems are ERR_INVALID_ARG_TYPE, bad values ERR_OUT_OF_RANGE. */
import { QwenError } from "./errors.js";

function describe(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  return typeof value === "string" ? `the string ${JSON.stringify(value.slice(0, 40))}` : `${typeof value} ${String(value)}`;
}

export function optionalObject<T extends object>(name: string, value: unknown): Partial<T> {
  if (value === undefined) return {};
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new QwenError("ERR_INVALID_ARG_TYPE", `${name} must be an object, got ${describe(value)}`);
  }
  return value as Partial<T>;
}

export function checkNumber(name: string, value: unknown, fallback: number, min: number, max: number, integer = false): number {
  if (value === undefined) return fallback;
  if (typeof value !== "number" || Number.isNaN(value)) throw new QwenError("ERR_INVALID_ARG_TYPE", `${name} must be a number, got ${describe(value)}`);
  if (integer && !Number.isInteger(value)) throw new QwenError("ERR_OUT_OF_RANGE", `${name} must be an integer, got ${value}`);
  if (value < min || value > max) throw new QwenError("ERR_OUT_OF_RANGE", `${name} must be between ${min} and ${max}, got ${value}`);
  return value;
}

export const checkInt = (name: string, value: unknown, fallback: number, min: number, max: number) =>
  checkNumber(name, value, fallback, min, max, true);

export function checkBool(name: string, value: unknown, fallback: boolean): boolean {
  if (value === undefined) return fallback;
  if (typeof value !== "boolean") throw new QwenError("ERR_INVALID_ARG_TYPE", `${name} must be a boolean, got ${describe(value)}`);
  return value;
}

export function checkString(name: string, value: unknown): string {
  if (typeof value !== "string") throw new QwenError("ERR_INVALID_ARG_TYPE", `${name} must be a string, got ${describe(value)}`);
  return value;
}

export function checkOneOf<T extends string>(name: string, value: unknown, allowed: readonly T[], fallback: T): T {
  if (value === undefined) return fallback;
  if (typeof value !== "string" || !allowed.includes(value as T)) {
    throw new QwenError("ERR_OUT_OF_RANGE", `${name} must be one of ${allowed.map((a) => JSON.stringify(a)).join(", ")}, got ${describe(value)}`);
  }
  return value as T;
}

export function checkSignal(name: string, value: unknown): AbortSignal | undefined {
  if (value === undefined) return undefined;
  if (!(value instanceof AbortSignal)) throw new QwenError("ERR_INVALID_ARG_TYPE", `${name} must be an AbortSignal, got ${describe(value)}`);
  return value;
}

export function checkFunction<T extends (...args: never[]) => unknown>(name: string, value: unknown): T | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== "function") throw new QwenError("ERR_INVALID_ARG_TYPE", `${name} must be a function, got ${describe(value)}`);
  return value as T;
}

export function checkStringList(name: string, value: unknown): string[] {
  if (value === undefined) return [];
  const list = typeof value === "string" ? [value] : value;
  if (!Array.isArray(list) || list.some((s) => typeof s !== "string")) {
    throw new QwenError("ERR_INVALID_ARG_TYPE", `${name} must be a string or an array of strings, got ${describe(value)}`);
  }
  return list as string[];
}
